"""Live video: stream processors that search frames as they are captured (Rekognition's stream processors)."""
