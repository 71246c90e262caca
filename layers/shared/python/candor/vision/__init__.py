"""Face detection (YuNet), alignment and embedding (SFace or FaceNet) with onnxruntime, Pillow and numpy only.

Import from the modules themselves (`candor.vision.models`, `candor.vision.images`, ...): this package file
stays empty so that decoding an image does not load onnxruntime.
"""
