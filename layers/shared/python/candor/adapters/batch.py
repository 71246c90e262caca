"""The SQS batch processor both pipeline functions use: partial batch failures, each failure logged."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord


class LoggedSqsBatchProcessor(BatchProcessor):
    """SQS cannot attach an error to a message, so the error a record failed with is logged against its
    message id, which the dead-letter queue keeps (`candor dlq explain` and Logs Insights find it there)."""

    def __init__(self, logger: Logger) -> None:
        super().__init__(event_type=EventType.SQS)
        self._logger = logger

    def failure_handler(self, record: Any, exception: Any) -> Any:
        message_id = getattr(record, "message_id", None)
        receive_count = record.attributes.approximate_receive_count if isinstance(record, SQSRecord) else None
        self._logger.error(
            "record failed; SQS will deliver it again, or dead-letter it after maxReceiveCount",
            exc_info=exception,
            extra={"message_id": message_id, "receive_count": receive_count},
        )
        return super().failure_handler(record, exception)
