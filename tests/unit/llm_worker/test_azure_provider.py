"""Azure OpenAI through the real SDK: deployment paths, api-version, keys and Entra ID, regions,
content-filter outcomes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from llm_worker.chat.streaming import fold
from llm_worker.providers.azure import AzureChatModel
from llm_worker.providers.config import AzureOpenAIConfig
from tests.fakes.openai_server import FakeOpenAI, Scenario


@pytest.fixture
async def east() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def west() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


def _root(fake: FakeOpenAI) -> str:
    return f"http://127.0.0.1:{fake.port}"


def _request(text: str = "hello azure") -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "azure/x", "messages": [{"role": "user", "content": text}]}
    )


def _config(east: FakeOpenAI, west: FakeOpenAI, **extra: object) -> AzureOpenAIConfig:
    return AzureOpenAIConfig.model_validate(
        {
            "endpoint": _root(east),
            "api_version": "2024-10-21",
            "api_key": "azure-secret",
            "deployments": {
                "gpt4o": {"deployment": "prod-gpt4o"},
                "gpt4o-eu": {
                    "deployment": "eu-gpt4o",
                    "endpoint": _root(west),
                    "api_version": "2025-01-01-preview",
                },
            },
            **extra,
        }
    )


async def test_an_alias_streams_from_its_deployment_path_with_api_version_and_key(
    east: FakeOpenAI, west: FakeOpenAI
) -> None:
    model = AzureChatModel(_config(east, west))

    completion = await fold(model.stream(_request(), "gpt4o"))
    await model.aclose()

    [sent] = east.chat_requests()
    assert completion.content == "Echo: hello azure"
    assert sent.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == "azure-secret"
    assert west.chat_requests() == []


async def test_a_regional_deployment_goes_to_its_own_endpoint_and_api_version(
    east: FakeOpenAI, west: FakeOpenAI
) -> None:
    model = AzureChatModel(_config(east, west))

    completion = await model.generate(_request("bonjour"), "gpt4o-eu")
    await model.aclose()

    [sent] = west.chat_requests()
    assert completion.content == "Echo: bonjour"
    assert sent.path == "/openai/deployments/eu-gpt4o/chat/completions"
    assert sent.query == {"api-version": "2025-01-01-preview"}
    assert east.chat_requests() == []


async def test_entra_id_sends_a_bearer_token_instead_of_a_key(
    east: FakeOpenAI, west: FakeOpenAI
) -> None:
    config = _config(east, west, api_key=None, entra_id=True)
    model = AzureChatModel(config, token_provider=lambda: "entra-token")

    await fold(model.stream(_request(), "gpt4o"))
    await model.aclose()

    [sent] = east.chat_requests()
    assert sent.headers["Authorization"] == "Bearer entra-token"
    assert "api-key" not in sent.headers


async def test_a_content_filter_rejection_names_the_filtered_categories(
    east: FakeOpenAI, west: FakeOpenAI
) -> None:
    east.scenarios["prod-gpt4o"] = Scenario(
        status=400,
        error_body={
            "error": {
                "message": "The response was filtered",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        "hate": {"filtered": True, "severity": "high"},
                        "sexual": {"filtered": False, "severity": "safe"},
                        "violence": {"filtered": True, "severity": "medium"},
                    },
                },
            }
        },
    )
    model = AzureChatModel(_config(east, west))

    with pytest.raises(FerrymanError) as failure:
        await fold(model.stream(_request(), "gpt4o"))
    await model.aclose()

    error = failure.value
    assert (error.code, error.retryable, error.status, error.upstream) == (
        ErrorCode.CONTENT_FILTER,
        False,
        400,
        "azure",
    )
    assert "hate=high" in error.message
    assert "violence=medium" in error.message
    assert "sexual" not in error.message


async def test_a_streamed_content_filter_finish_is_reported_as_such(
    east: FakeOpenAI, west: FakeOpenAI
) -> None:
    east.scenarios["prod-gpt4o"] = Scenario(
        answer="partial",
        finish_reason="content_filter",
        content_filter_results={
            "hate": {"filtered": False, "severity": "safe"},
            "self_harm": {"filtered": True, "severity": "medium"},
        },
    )
    model = AzureChatModel(_config(east, west))

    completion = await fold(model.stream(_request(), "gpt4o"))
    await model.aclose()

    assert completion.finish_reason == "content_filter"
    assert completion.content == "partial"
    assert completion.filtered_categories == ["self_harm=medium"]


def test_azure_config_rejects_a_key_together_with_entra_id() -> None:
    with pytest.raises(ValueError, match="either an API key or entra_id"):
        AzureOpenAIConfig.model_validate(
            {"endpoint": "https://x", "api_key": "k", "entra_id": True}
        )


@pytest.mark.parametrize("alias", ["../../admin", "x/../y", "prod?api-version=1", "a b", "-x"])
async def test_a_deployment_name_that_would_change_the_url_is_an_invalid_request(
    east: FakeOpenAI, west: FakeOpenAI, alias: str
) -> None:
    model = AzureChatModel(_config(east, west))

    with pytest.raises(FerrymanError) as failure:
        await fold(model.stream(_request(), alias))
    await model.aclose()

    assert (failure.value.code, failure.value.retryable) == (ErrorCode.INVALID_REQUEST, False)
    assert "not a plain name" in failure.value.message
    assert east.requests == west.requests == []
