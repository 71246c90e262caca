"""Every tunable in one place. Values come from the environment (template.yaml sets them on AWS, the local
runtime resolves the same template locally); the defaults here are the measured ones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "candor" / "models"

DETECTOR_FILE = "yunet_2023mar.onnx"
DETECTOR_VERSION = "yunet-2023mar"
# The pinned digests of the model files: what the setup step builds and verifies, what a function
# fetching a model from the model bucket checks (layers/models/MODEL_CARD.md says where they come from).
DETECTOR_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
# The embedding models (candor/vision/embedder.py). A version names the model and its crop together:
# embeddings of two versions are not comparable, so a collection keeps the version it was created with.
FACENET_VERSION = "facenet-20180408-102900+box-stretch-0.10-0.05"
FACENET_FILE = "facenet_20180408.onnx"
FACENET_SHA256 = "f0571d526e703ed8f5f06e5421c4f2ddcaee4ed0ae6dfa5b483bac93336905a9"
SFACE_VERSION = "sface-2021dec+five-point-112"
SFACE_FILE = "sface_2021dec.onnx"
SFACE_SHA256 = "c760c6ba3cf125434c91db5266f84b8bc9cf79de32f1ba68607e287ef09a6118"
_EMBEDDER_FILES = {FACENET_VERSION: (FACENET_FILE, FACENET_SHA256, 512), SFACE_VERSION: (SFACE_FILE, SFACE_SHA256, 128)}
# The model new collections get: chosen on LFW (docs/benchmarks.md, "Accuracy on LFW").
EMBEDDER_VERSION = SFACE_VERSION
EMBEDDER_FILE, EMBEDDER_SHA256, EMBEDDING_SIZE = _EMBEDDER_FILES[EMBEDDER_VERSION]

# Rekognition's limits: 5 MB for image bytes in a request, 15 MB for an S3 object, 100 faces per image.
MAX_REQUEST_IMAGE_BYTES = 5 * 1024 * 1024
MAX_OBJECT_IMAGE_BYTES = 15 * 1024 * 1024
MAX_FACES = 100
MIN_IMAGE_SIDE = 80
# Refused before decoding: a 50,000 x 50,000 PNG header must never reach the decoder.
MAX_IMAGE_PIXELS = 80_000_000
# A JPEG whose longest side is at least twice this is decoded at 1/2, 1/4 or 1/8 size (never below it):
# decoding is then several times faster and lighter, while a face spanning 4% of the longest side still
# yields a full 160-pixel crop for the embedder (docs/benchmarks-preprocessing.md).
DECODE_MIN_LONG_SIDE = 4096

# Detection: score = sqrt(cls * obj) of YuNet, 0..1. Measured (docs/benchmarks-preprocessing.md): on 28
# labelled photos every real face scores >= 0.888 and nothing else above 0.702; 0.8 sits mid-gap.
# NMS_IOU is OpenCV FaceDetectorYN's default.
MIN_DETECTION_CONFIDENCE = 0.8
DETECTION_NMS_IOU = 0.3
# Faces per onnxruntime call to the embedder: bounded so that a 100-face photo stays within Lambda memory.
EMBED_BATCH_SIZE = 16

# Key layout for enrolment by upload: enroll/<collection_id>/<external_image_id>/<file>.
ENROLL_PREFIX = "enroll/"
DEFAULT_FACE_MATCH_THRESHOLD = 80.0
# Days a photo that enrols nobody, its faces and their embeddings are kept (RetentionDays in template.yaml).
DEFAULT_RETENTION_DAYS = 30
# The object tag the upload bucket's lifecycle rule expires photos by (template.yaml, ExpireUnenrolledPhotos).
RETENTION_TAG = ("candor-retention", "expire")

# Search index (candor/index/vectors.py; measured in docs/benchmarks.md, "Search index"). Below HNSW_MIN_FACES a
# collection is searched by exact brute force (about a millisecond at 20k faces); above it an int8 HNSW graph
# proposes HNSW_RESCORE_CANDIDATES candidates per query and the float32 vectors rescore them.
HNSW_MIN_FACES = 20_000
# 32 links per node (64 on the base layer): with 16, tight clusters of one person's photos in a space where
# strangers are nearly orthogonal end up unreachable and recall stops growing with the search expansion.
HNSW_CONNECTIVITY = 32
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 256
HNSW_RESCORE_CANDIDATES = 64
# Embeddings are unit vectors, so the inner product is their cosine; the graph's int8 distance then skips the
# two norms a cosine computes: a quarter less time per search and a third less per build, at the same recall.
HNSW_METRIC = "ip"
# Where a collection's vectors live (candor/index/engines.py; docs/benchmarks.md, "Search index"): in the search
# function's own index (the default: a warm search takes milliseconds), or in an Amazon S3 Vectors index of its
# own (no size limit, ~100 ms a query). A collection past IN_FUNCTION_MAX_FACES faces belongs on S3 Vectors: at 1M
# faces on 2 cores one in-function graph of 500k recalled 0.967 of the exact top-10, and a 10 GB function holds
# about 4M faces at most (docs/benchmarks.md). `candor collections migrate` moves it.
IN_FUNCTION_MAX_FACES = 250_000
# The search function publishes a collection's index to the index bucket once it holds SNAPSHOT_MIN_FACES
# faces (below that, building it from the table takes well under a second) and SNAPSHOT_MIN_CHANGES faces
# were added or removed since the snapshot it loaded.
SNAPSHOT_MIN_FACES = HNSW_MIN_FACES
SNAPSHOT_MIN_CHANGES = 1_000
# How long a collection's change log keeps an entry (DynamoDB's TTL). A warm search function applies the
# entries it missed; one that missed more than the log holds (or a snapshot older than that) rebuilds from
# the faces table instead, which is correct, only slower.
CHANGE_LOG_DAYS = 7
# Face ids per change log entry: well inside DynamoDB's 400 KB item limit.
CHANGE_LOG_ENTRY_FACES = 1_000


# A policy change that loosens a collection's rules waits this long (template.yaml, PolicyLooseningDelayHours).
DEFAULT_POLICY_LOOSENING_DELAY_HOURS = 24.0


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    photos_table: str
    faces_table: str
    collections_table: str
    collection_changes_table: str
    users_table: str
    audit_table: str
    quotas_table: str
    embed_queue_url: str
    upload_bucket: str
    index_bucket: str
    min_detection_confidence: float
    face_match_threshold: float
    # Where models too large for the model layer come from on AWS (candor/vision/model_files.py); empty locally.
    model_bucket: str = ""
    model_prefix: str = ""
    # onnxruntime threads per model (0: one per core). One per function instance: a Lambda instance of these
    # sizes has about one vCPU, and locally the functions share the cores (docs/benchmarks.md, efficiency).
    model_threads: int = 0
    retention_days: int = DEFAULT_RETENTION_DAYS
    # The vector bucket (its ARN) holding one S3 Vectors index per collection on that engine; empty: none.
    vector_bucket: str = ""
    # Where the signed audit digests go and the KMS key that signs them (candor/accountability/digests.py).
    audit_digest_bucket: str = ""
    audit_digest_key: str = ""
    # Which operations this face API serves ("search" or "admin") and how long a policy's loosening waits.
    face_api_role: str = "search"
    policy_loosening_delay_hours: float = DEFAULT_POLICY_LOOSENING_DELAY_HOURS
    # Stored-video jobs (candor/video_jobs.py; template.yaml's VideoJobsTable, VideoResultsBucket, queues).
    video_jobs_table: str = ""
    video_results_bucket: str = ""
    video_job_queue_url: str = ""
    video_segment_queue_url: str = ""
    video_segment_ms: int = 10_000
    video_segment_workers: int = 1
    video_sample_interval_ms: int = 200
    video_result_days: int = 7
    video_max_receives: int = 3
    video_retry_delay_s: int = 30
    # Stream processors (candor/live_processors.py; template.yaml's StreamProcessorsTable, LiveFrameStream).
    stream_processors_table: str = ""
    live_max_frame_age_ms: int = 1000

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            model_dir=Path(env.get("MODEL_DIR") or DEFAULT_MODEL_DIR),
            photos_table=env.get("PHOTOS_TABLE", ""),
            faces_table=env.get("FACES_TABLE", ""),
            collections_table=env.get("COLLECTIONS_TABLE", ""),
            collection_changes_table=env.get("COLLECTION_CHANGES_TABLE", ""),
            users_table=env.get("USERS_TABLE", ""),
            audit_table=env.get("AUDIT_TABLE", ""),
            quotas_table=env.get("QUOTAS_TABLE", ""),
            embed_queue_url=env.get("EMBED_QUEUE_URL", ""),
            upload_bucket=env.get("UPLOAD_BUCKET", ""),
            index_bucket=env.get("INDEX_BUCKET", ""),
            min_detection_confidence=float(env.get("MIN_DETECTION_CONFIDENCE", str(MIN_DETECTION_CONFIDENCE))),
            face_match_threshold=float(env.get("FACE_MATCH_THRESHOLD", str(DEFAULT_FACE_MATCH_THRESHOLD))),
            model_bucket=env.get("MODEL_BUCKET", ""),
            model_prefix=env.get("MODEL_PREFIX", ""),
            model_threads=int(env.get("MODEL_THREADS", "0")),
            retention_days=int(env.get("RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS))),
            vector_bucket=env.get("VECTOR_BUCKET", ""),
            audit_digest_bucket=env.get("AUDIT_DIGEST_BUCKET", ""),
            audit_digest_key=env.get("AUDIT_DIGEST_KEY", ""),
            face_api_role=env.get("FACE_API_ROLE", "search"),
            video_jobs_table=env.get("VIDEO_JOBS_TABLE", ""),
            video_results_bucket=env.get("VIDEO_RESULTS_BUCKET", ""),
            video_job_queue_url=env.get("VIDEO_JOB_QUEUE_URL", ""),
            video_segment_queue_url=env.get("VIDEO_SEGMENT_QUEUE_URL", ""),
            video_segment_ms=int(float(env.get("VIDEO_SEGMENT_SECONDS", str(VIDEO_SEGMENT_MS / 1000))) * 1000),
            video_segment_workers=int(env.get("VIDEO_SEGMENT_WORKERS", "1")),
            video_sample_interval_ms=int(env.get("VIDEO_SAMPLE_INTERVAL_MS", str(VIDEO_SAMPLE_INTERVAL_MS))),
            video_result_days=int(env.get("VIDEO_RESULT_DAYS", str(VIDEO_RESULT_DAYS))),
            video_max_receives=int(env.get("VIDEO_MAX_RECEIVES", "3")),
            video_retry_delay_s=int(env.get("VIDEO_RETRY_DELAY_S", "30")),
            stream_processors_table=env.get("STREAM_PROCESSORS_TABLE", ""),
            live_max_frame_age_ms=int(env.get("LIVE_MAX_FRAME_AGE_MS", str(LIVE_MAX_FRAME_AGE_MS))),
            policy_loosening_delay_hours=float(
                env.get("POLICY_LOOSENING_DELAY_HOURS", str(DEFAULT_POLICY_LOOSENING_DELAY_HOURS))
            ),
        )


# Video (candor/video/). A stored video is sampled every VIDEO_SAMPLE_INTERVAL_MS, on a grid from the start of
# the video, so the segments of one video sample the same instants as the whole. The limits are Rekognition
# Video's (10 GB, 6 hours) and a frame of at most 4K: larger ones are refused after probing, before decoding.
VIDEO_SAMPLE_INTERVAL_MS = 200
# A video is split into segments of VIDEO_SEGMENT_MS, analysed in parallel; a job's results are kept
# VIDEO_RESULT_DAYS (Rekognition Video keeps them 7 days). GetFaceDetection/GetFaceSearch pages hold at most
# MAX_VIDEO_RESULTS_PAGE entries (Rekognition's MaxResults limit).
VIDEO_SEGMENT_MS = 10_000
VIDEO_RESULT_DAYS = 7
MAX_VIDEO_RESULTS_PAGE = 1000
MAX_VIDEO_BYTES = 10 * 1024**3
MAX_VIDEO_DURATION_MS = 6 * 60 * 60 * 1000
MAX_VIDEO_FRAME_PIXELS = 3840 * 2160
# Codecs decoded (PyAV's names); anything else is refused as unsupported.
VIDEO_CODECS = ("h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "gif")
# Tracking (candor/video/tracking.py). A face joins a track when box overlap and embedding cosine together
# score high enough; a track waits TRACK_MAX_MISSED_SAMPLES samples (a turned or hidden head) before it ends.
# Tracks of one person (across a segment border, or after a longer absence) are merged into one person
# when their mean embeddings reach TRACK_MERGE_MIN_COSINE and they never appear in the same frame.
TRACK_MIN_IOU = 0.2
TRACK_MIN_COSINE = 0.2
TRACK_REIDENTIFY_COSINE = 0.45
TRACK_MAX_MISSED_SAMPLES = 5
TRACK_MERGE_MIN_COSINE = 0.45
# Live streams (candor/live/). A frame analysed later than LIVE_MAX_FRAME_AGE_MS after its capture is dropped
# (counted, and reported in the next output record): an overloaded processor catches up rather than falling
# behind. A frame is a photo of at most LIVE_MAX_FRAME_BYTES (a Kinesis record holds 1 MiB with its framing).
LIVE_MAX_FRAME_AGE_MS = 1000
# A face that stays where its track was in the last frame (boxes overlapping by LIVE_REUSE_MIN_IOU, nobody
# else near) keeps the track's last embedding and matches, up to LIVE_SEARCH_MAX_AGE_MS after that search:
# a still face is embedded and searched once a second, not once a frame.
LIVE_REUSE_MIN_IOU = 0.6
LIVE_SEARCH_MAX_AGE_MS = 1000
LIVE_MAX_FRAME_BYTES = 700 * 1024
