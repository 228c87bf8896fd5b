"""schemathesis hooks (tests/acceptance/schemathesis.toml): what JSON Schema cannot say about valid input.

custom_ids are unique within a batch, and a list takes one cursor at most. A case generated as
valid is made to follow both rules; a case generated as invalid stays as it is (duplicates are
one more thing the server must refuse).
"""

from __future__ import annotations

import schemathesis
from schemathesis import GenerationMode


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    meta = getattr(case, "_meta", None)
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if case.query and case.query.get("after_id") and case.query.get("before_id"):
        case.query.pop("before_id")
    requests = case.body.get("requests") if isinstance(case.body, dict) else None
    if isinstance(requests, list):
        for i, item in enumerate(requests):
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                item["custom_id"] = f"{item['custom_id'][:56]}_{i}"
    return case
