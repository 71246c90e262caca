"""The local stack's access keys: key id -> secret -> the template's role whoever signs with it plays.

The Function URLs verify every signature against these (function_url.py), and a URL accepts only the keys
whose role the template lets invoke it (template.url_invokers), so the split between searching and
administering policies means locally what it means on AWS:

- `test`/`test`, the conventional local pair, and the emulator's own (`testing`/`testing`, what the runtime
  and its tests sign with) play FaceApiSearchRole, so clients and scripts that work against an emulator keep
  working for everything but the policy administration;
- one admin pair plays PolicyAdminRole: made at random for a stack, kept in its data directory (so a restart
  keeps it, as it keeps the ports) or, without one, for the run only.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from candor_local.emulator.moto_server import EMULATOR_CREDENTIALS
from candor_local.emulator.worker_config import LocalCredential

SEARCH_ROLE = "FaceApiSearchRole"
ADMIN_ROLE = "PolicyAdminRole"
# The pair emulators conventionally accept (LocalStack's documented default).
CONVENTIONAL_PAIR = ("test", "test")
ADMIN_KEY_PREFIX = "CANDORADMIN"
ADMIN_CREDENTIALS_FILE = "admin-credentials.json"

_KEY_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "/+"


def role_name(stack_name: str, role: str) -> str:
    """The name a local role plays under (CloudFormation's naming minus its random suffix, 64 at most)."""
    return f"{stack_name}-{role}"[:64]


def new_admin_pair() -> tuple[str, str]:
    """A fresh key id (CANDORADMIN + 12 letters and digits) and a 40-character secret."""
    key_id = ADMIN_KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(12))
    return key_id, "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def admin_pair(folder: Path) -> tuple[str, str]:
    """The admin pair kept in `folder`, made (readable by its owner only) the first time."""
    path = folder / ADMIN_CREDENTIALS_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return str(saved["AccessKeyId"]), str(saved["SecretAccessKey"])
    key_id, secret = new_admin_pair()
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({"AccessKeyId": key_id, "SecretAccessKey": secret, "Role": ADMIN_ROLE}, handle)
    return key_id, secret


def local_credentials(
    stack_name: str, folder: Path, more: Iterable[LocalCredential] = ()
) -> dict[str, LocalCredential]:
    """Key id -> credential: the two search pairs, the admin pair kept in `folder`, then `more` (which may
    replace any of them; an empty role_name is the stack's name for the role)."""

    def credential(key_id: str, secret: str, role: str) -> LocalCredential:
        return LocalCredential(key_id, secret, role, role_name(stack_name, role))

    search_pairs = {
        CONVENTIONAL_PAIR,
        (EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"], EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
    }
    found = {key_id: credential(key_id, secret, SEARCH_ROLE) for key_id, secret in sorted(search_pairs)}
    admin_key, admin_secret = admin_pair(folder)
    found[admin_key] = credential(admin_key, admin_secret, ADMIN_ROLE)
    for extra in more:
        found[extra.access_key_id] = replace(extra, role_name=extra.role_name or role_name(stack_name, extra.role))
    return found
