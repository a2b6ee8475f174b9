"""Who the Hub token belongs to and whether it may write to a namespace: asked before
anything is sent. The token is handed to the client and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import HubAuthError
from .errors import hub_errors


def find_token_source(token: str | None) -> str | None:
    if token:
        return "argument"
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "HF_TOKEN"
    from huggingface_hub import constants

    # Only look: get_token() may exchange an OIDC token over the network.
    return "stored login" if Path(constants.HF_TOKEN_PATH).is_file() else None


def resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "No Hugging Face token was found.",
            hint="Set HF_TOKEN, or run `hf auth login` with a token that has write access.",
        )
    return token


def check_write_access(token: str, repo_id: str) -> None:
    """Ask the Hub who the token belongs to and whether it may write to the namespace."""
    from huggingface_hub import HfApi

    with hub_errors(repo_id, stage="checking the token"):
        info = HfApi(token=token).whoami()
    namespace = repo_id.split("/")[0]
    access = (info.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    orgs = {o.get("name"): o.get("roleInOrg") for o in info.get("orgs") or []}
    user = info.get("name")
    if role == "read":
        raise HubAuthError(
            f"The token ({access.get('displayName') or 'unnamed'}, of {user}) is read-only.",
            hint="Create a token with write access at https://huggingface.co/settings/tokens.",
        )
    if role == "fineGrained" and not _fine_grained_may_write(access, namespace, repo_id):
        raise HubAuthError(
            f"The fine-grained token of {user} has no write permission on {namespace}.",
            hint="Add 'Write access to contents/settings of all repos' for that namespace.",
        )
    if namespace != user and namespace not in orgs:
        raise HubAuthError(
            f"{user} cannot create repos under {namespace!r}: not their name nor one of their "
            f"organizations ({', '.join(sorted(o for o in orgs if o)) or 'none'}).",
            hint=f"Use --repo {user}/NAME or an organization you belong to.",
        )
    if namespace in orgs and orgs[namespace] == "read":
        raise HubAuthError(f"{user} has the read role in the {namespace} organization.")


def _fine_grained_may_write(access: dict[str, Any], namespace: str, repo_id: str) -> bool:
    grants = (access.get("fineGrained") or {}).get("scoped") or []
    for grant in grants:
        entity = grant.get("entity") or {}
        if entity.get("name") in (namespace, repo_id) and "repo.write" in (
            grant.get("permissions") or []
        ):
            return True
    return False
