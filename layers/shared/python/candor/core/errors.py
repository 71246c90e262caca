"""Errors a user can act on. Each carries a stable reason code that is recorded with a FAILED photo
and mapped onto Rekognition's error names by the face API."""

from __future__ import annotations


class CandorError(Exception):
    code = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImageError(CandorError):
    """The bytes are not an image we can decode (unknown format, truncated, empty)."""

    code = "InvalidImageFormat"


class ImageTooLargeError(CandorError):
    """Too many bytes or too many pixels (a decompression bomb is refused before it is decoded)."""

    code = "ImageTooLarge"


class ImageTooSmallError(CandorError):
    code = "ImageTooSmall"


class InvalidParameterError(CandorError):
    code = "InvalidParameter"


class ResourceNotFoundError(CandorError):
    code = "ResourceNotFound"


class ResourceAlreadyExistsError(CandorError):
    code = "ResourceAlreadyExists"


class InvalidS3ObjectError(CandorError):
    """The S3 object named as an image does not exist or cannot be read."""

    code = "InvalidS3Object"


class ConflictError(CandorError):
    """The request clashes with what exists (a user id that is taken)."""

    code = "Conflict"


class InvalidPaginationTokenError(CandorError):
    code = "InvalidPaginationToken"


class NoFaceError(CandorError):
    code = "NoFaceDetected"


class MalformedEventError(CandorError):
    code = "MalformedEvent"


class ConsentRequiredError(CandorError):
    """An enrolment without a consent reference: the face is not indexed."""

    code = "ConsentRequired"


class PurposeNotDeclaredError(CandorError):
    """A search for a purpose the collection does not declare, or without the case reference it needs."""

    code = "PurposeNotDeclared"


class ThresholdBelowFloorError(CandorError):
    """A match threshold below the collection's floor (99 for identification, 80 otherwise)."""

    code = "ThresholdBelowFloor"


class FalseMatchRiskTooHighError(CandorError):
    """The search's threshold gives a higher chance of matching a stranger, at the collection's size, than
    its policy's MaxFalseMatchRisk allows."""

    code = "FalseMatchRiskTooHigh"


class FaceModelMismatchError(CandorError):
    """The collection holds embeddings of another face model than the one this stack runs."""

    code = "FaceModelMismatch"


class QuotaExceededError(CandorError):
    """More searches in the current minute than the collection allows a caller (or all callers)."""

    code = "QuotaExceeded"


class AdminOperationError(CandorError):
    """An operation of the other face API: policy administration on the search URL, or a search on the admin one."""

    code = "AdminOperation"


class InvalidVideoError(CandorError):
    """The file is not a video we can decode (a still image, an unsupported codec, empty, truncated)."""

    code = "InvalidVideo"


class VideoTooLargeError(CandorError):
    """Too many bytes, too long, or frames too large to process (Rekognition's VideoTooLargeException)."""

    code = "VideoTooLarge"


class IdempotentParameterMismatchError(CandorError):
    """A ClientRequestToken used again with a different request."""

    code = "IdempotentParameterMismatch"


class ResourceInUseError(CandorError):
    """The resource is busy for this request (a running stream processor, an input another one reads)."""

    code = "ResourceInUse"
