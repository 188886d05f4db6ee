"""Pipelines in the policy file: the steps and their options, `on_upload` rules, the
built-in pipelines, and errors that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storage_worker.pipelines.config import (
    BUILTIN_PIPELINES,
    ExtractTextStep,
    ThumbnailStep,
    pipeline_named,
)
from storage_worker.pipelines.steps import output_extension
from storage_worker.policy import PolicyError, parse_policy

POLICY = """
backends:
  local: {type: local, root: /srv/storage}
tenants:
  acme:
    spaces: {local: "acme/"}
    on_upload: [{prefix: "inbox/", pipeline: documents}, {prefix: "", pipeline: text}]
pipelines:
  documents:
    version: 2
    steps:
      - {step: checksum}
      - {step: detect}
      - {step: extract_text}
      - {step: thumbnail, size: 128, format: png}
      - {step: convert, format: jpeg, name: as_jpeg}
      - {step: metadata}
"""


def policy_with(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "backends": {"local": {"type": "local", "root": "/srv/storage"}},
        "tenants": {"acme": {"spaces": {"local": "acme/"}}},
    }
    document.update(changes)
    return json.dumps(document).encode()


def test_a_policy_declares_pipelines_and_upload_rules() -> None:
    policy = parse_policy(POLICY.encode())

    documents = policy.pipelines["documents"]
    assert documents.version == "2"
    assert [s.step_name for s in documents.steps] == [
        "checksum",
        "detect",
        "extract_text",
        "thumbnail",
        "as_jpeg",
        "metadata",
    ]
    thumbnail = documents.steps[3]
    assert isinstance(thumbnail, ThumbnailStep)
    assert (thumbnail.size, thumbnail.format) == (128, "png")
    assert [output_extension(s) for s in documents.steps] == [
        None,
        None,
        "txt",
        "png",
        "jpg",
        None,
    ]
    rules = policy.tenants["acme"].on_upload
    assert [(r.prefix, r.pipeline) for r in rules] == [("inbox/", "documents"), ("", "text")]


def test_built_in_pipelines_unless_the_policy_replaces_them() -> None:
    policy = parse_policy(POLICY.encode())
    replaced = parse_policy(
        policy_with(pipelines={"text": {"steps": [{"step": "extract_text", "max_bytes": 5}]}})
    )

    assert pipeline_named(policy.pipelines, "text") == BUILTIN_PIPELINES["text"]
    assert [s.step_name for s in BUILTIN_PIPELINES["text"].steps] == ["detect", "extract_text"]
    assert [s.step_name for s in BUILTIN_PIPELINES["thumbnail"].steps] == ["thumbnail"]
    text = pipeline_named(replaced.pipelines, "text")
    assert text is not None
    assert text.steps == [ExtractTextStep(step="extract_text", max_bytes=5)]
    assert pipeline_named(policy.pipelines, "nothing") is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"pipelines": {"p": {"steps": [{"step": "ocr"}]}}}, "pipelines.p.steps.0"),
        (
            {"pipelines": {"p": {"steps": [{"step": "thumbnail", "size": 0}]}}},
            "pipelines.p.steps.0.thumbnail.size",
        ),
        (
            {"pipelines": {"p": {"steps": [{"step": "convert"}]}}},
            "pipelines.p.steps.0.convert.format",
        ),
        (
            {"pipelines": {"p": {"steps": [{"step": "convert", "format": "svg"}]}}},
            "pipelines.p.steps.0.convert.format",
        ),
        (
            {"pipelines": {"p": {"steps": [{"step": "detect", "colour": "red"}]}}},
            "pipelines.p.steps.0.detect.colour",
        ),
        ({"pipelines": {"p": {"steps": []}}}, "pipelines.p.steps"),
        (
            {"pipelines": {"p": {"steps": [{"step": "detect"}, {"step": "detect"}]}}},
            "steps.1: a step named 'detect'",
        ),
        ({"pipelines": {"..": {"steps": [{"step": "detect"}]}}}, "'..' cannot name a pipeline"),
        (
            {
                "tenants": {
                    "acme": {
                        "spaces": {"local": "acme/"},
                        "on_upload": [{"prefix": "in/", "pipeline": "missing"}],
                    }
                }
            },
            "tenants.acme.on_upload.0.pipeline: no pipeline 'missing'",
        ),
        (
            {"tenants": {"acme": {"spaces": {"local": "acme/"}, "on_upload": [{"prefix": "a/"}]}}},
            "tenants.acme.on_upload.0.pipeline",
        ),
    ],
)
def test_invalid_pipelines_name_the_field(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(policy_with(**changes))

    assert named in str(refused.value)


def test_a_step_s_configuration_changes_its_digest() -> None:
    small = ThumbnailStep(step="thumbnail", size=64)

    assert small.digest() == ThumbnailStep(step="thumbnail", size=64).digest()
    assert small.digest() != ThumbnailStep(step="thumbnail", size=65).digest()
