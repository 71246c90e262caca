"""moto's CloudFormation (5.2.1, as pinned) creates every AWS::KMS::Key as a symmetric encryption key, whatever its
KeySpec and KeyUsage say. The audit digests need an asymmetric signing key (AuditDigestKey), so the moto
this emulator starts creates keys from CloudFormation with the template's KeySpec and KeyUsage.

tests/test_digests.py checks that moto still ignores KeySpec without this and fails the day it does not,
so that this module can go.
"""

from __future__ import annotations

import json
from typing import Any

from moto.kms import models as kms_models

# moto's own, kept for the test that tells when this module is no longer needed.
MOTO_CREATE_FROM_CLOUDFORMATION = kms_models.Key.create_from_cloudformation_json


def honour_key_spec() -> None:
    """Idempotent: CloudFormation keys get their template's KeySpec and KeyUsage."""
    key_class = kms_models.Key
    if getattr(key_class.create_from_cloudformation_json, "_candor", False):
        return

    def create_from_cloudformation_json(
        resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> kms_models.Key:
        properties = cloudformation_json["Properties"]
        key = kms_models.kms_backends[account_id][region_name].create_key(
            # moto's create_key takes the policy as the API does, as a JSON string.
            policy=policy if isinstance(policy := properties["KeyPolicy"], str) else json.dumps(policy),
            key_usage=properties.get("KeyUsage", "ENCRYPT_DECRYPT"),
            key_spec=properties.get("KeySpec", "SYMMETRIC_DEFAULT"),
            description=properties.get("Description"),
            tags=properties.get("Tags", []),
        )
        key.key_rotation_status = properties.get("EnableKeyRotation", False)
        key.enabled = properties.get("Enabled", True)
        return key

    create_from_cloudformation_json._candor = True  # type: ignore[attr-defined]
    key_class.create_from_cloudformation_json = staticmethod(create_from_cloudformation_json)  # type: ignore[method-assign]
