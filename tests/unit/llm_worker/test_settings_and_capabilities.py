"""Provider configuration from the environment, and capability checks before any provider call."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.routing.capabilities import Capabilities, CapabilityTable
from llm_worker.settings import LlmWorkerSettings


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> LlmWorkerSettings:
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return LlmWorkerSettings()


def test_conventional_key_variables_enable_their_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        OPENAI_API_KEY="sk-o",
        ANTHROPIC_API_KEY="sk-a",
        GOOGLE_API_KEY="g-key",
        AZURE_OPENAI_API_KEY="az",
        AZURE_OPENAI_ENDPOINT="https://res.openai.azure.com",
    )

    assert settings.openai.enabled
    assert settings.anthropic.enabled
    assert settings.gemini.enabled
    assert settings.azure.enabled
    assert settings.gemini.api_key is not None
    assert settings.gemini.api_key.get_secret_value() == "g-key"
    assert "sk-o" not in repr(settings)


def test_nested_variables_configure_providers_and_win_over_conventional_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(
        monkeypatch,
        OPENAI_API_KEY="conventional",
        LLM_WORKER_OPENAI__API_KEY="nested",
        LLM_WORKER_OPENAI__TIMEOUT="12.5",
        LLM_WORKER_AZURE__ENDPOINT="https://res.openai.azure.com",
        LLM_WORKER_AZURE__ENTRA_ID="true",
        LLM_WORKER_AZURE__DEPLOYMENTS='{"gpt4o": {"deployment": "prod", "endpoint": "https://eu"}}',
        LLM_WORKER_GEMINI__SAFETY_SETTINGS='{"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}',
    )

    assert settings.openai.api_key is not None
    assert settings.openai.api_key.get_secret_value() == "nested"
    assert settings.openai.timeout == 12.5
    assert settings.azure.deployments["gpt4o"].endpoint == "https://eu"
    assert settings.azure.enabled
    assert settings.gemini.safety_settings == {"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}


def test_a_key_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "anthropic.key"
    key_file.write_text("sk-from-file\n")

    settings = _settings(monkeypatch, LLM_WORKER_ANTHROPIC__API_KEY_FILE=str(key_file))

    assert settings.anthropic.api_key is not None
    assert settings.anthropic.api_key.get_secret_value() == "sk-from-file"


def test_a_missing_key_file_is_a_clear_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="cannot read the key file"):
        _settings(monkeypatch, LLM_WORKER_GEMINI__API_KEY_FILE="/nonexistent/key")


def test_blank_conventional_variables_leave_providers_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(monkeypatch, OPENAI_API_KEY="", ANTHROPIC_API_KEY=" ")

    assert not settings.openai.enabled
    assert not settings.anthropic.enabled


def _request(**extra: object) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "p/m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


@pytest.mark.parametrize(
    ("capabilities", "request_extra", "missing"),
    [
        ({"tools": False}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"streaming": False}, {}, "streaming"),
        (
            {"json_schema": False},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": {"type": "object"}},
                }
            },
            "json_schema",
        ),
        ({"max_output_tokens": 100}, {"max_tokens": 101}, "max_output_tokens"),
    ],
)
def test_a_request_needing_a_missing_capability_fails_naming_it(
    capabilities: dict[str, object], request_extra: dict[str, object], missing: str
) -> None:
    table = CapabilityTable({"p/m": Capabilities.model_validate(capabilities)})

    with pytest.raises(FerrymanError) as failure:
        table.check(_request(**request_extra), "p", "m")

    assert failure.value.code == ErrorCode.INVALID_REQUEST
    assert repr(missing) in failure.value.message


def test_images_need_vision_and_the_mock_has_none() -> None:
    request = ChatRequest.model_validate(
        {
            "model": "mock/echo",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
        }
    )

    with pytest.raises(FerrymanError, match="'vision'"):
        CapabilityTable({}).check(request, "mock", "echo")
    CapabilityTable({}).check(request, "openai", "gpt-4o")


def test_a_provider_wildcard_applies_unless_a_model_entry_overrides_it() -> None:
    table = CapabilityTable(
        {"p/*": Capabilities(vision=False), "p/big": Capabilities(context_window=1_000_000)}
    )

    assert table.lookup("p", "small").vision is False
    assert table.lookup("p", "big").vision is True
    assert table.lookup("p", "big").context_window == 1_000_000


def test_azure_deployments_without_any_endpoint_are_a_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError, match="need an endpoint"):
        _settings(
            monkeypatch,
            AZURE_OPENAI_API_KEY="k",
            LLM_WORKER_AZURE__DEPLOYMENTS='{"gpt4o": {"deployment": "prod"}}',
        )
