"""DigestFunction: signs the heads of every audit chain and keeps the digest where no one can change it.

Run on a schedule (template.yaml, AuditDigestSchedule) and on demand (`candor audit digest`). One instance
at a time (reserved concurrency 1); a run that loses the race for a digest number anyway fails and the
next one digests again.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from candor.accountability.digests import write_digest
from candor.adapters.aws import DynamoAuditStore, DynamoCollectionRepository, KmsDigestSigner, S3DigestStore
from candor.core.settings import Settings

settings = Settings.from_env()
logger = Logger()
audit = DynamoAuditStore(settings.audit_table)
collections = DynamoCollectionRepository(settings.collections_table)
digests = S3DigestStore(settings.audit_digest_bucket)
signer = KmsDigestSigner(settings.audit_digest_key)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    digest = write_digest(audit, digests, signer, collections.list_ids())
    fields = digest.fields
    summary = {
        "number": digest.number,
        "time": fields["time"],
        "chains": len(fields["chains"]),
        "missing_chains": fields["missing_chains"],
        "key": S3DigestStore.key(digest.number),
    }
    if fields["missing_chains"]:
        logger.error("audit chains signed before have no entries now", extra=summary)
    else:
        logger.info("audit digest written", extra=summary)
    return summary
