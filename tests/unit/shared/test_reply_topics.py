"""Reply topics: the allow-list, and existence looked up without ever creating a topic."""

from __future__ import annotations

import asyncio

from ferryman_runtime.reply_topics import ReplyTopicPolicy, TopicDirectory


class _Cluster:
    """The cluster's topic list; counts fetches; a clock that only moves when told."""

    def __init__(self, *topics: str) -> None:
        self.topics = set(topics)
        self.now = 100.0
        self.slept: list[float] = []

    async def fetch(self) -> set[str]:
        await asyncio.sleep(0)  # let concurrent questions queue behind this fetch
        return set(self.topics)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def directory(self) -> TopicDirectory:
        return TopicDirectory(
            self.fetch, min_interval=0.2, clock=lambda: self.now, sleep=self.sleep
        )


async def test_a_topic_created_just_before_its_first_request_is_found() -> None:
    cluster = _Cluster("a.results")
    directory = cluster.directory()
    assert await directory.exists("a.results") is True

    cluster.topics.add("b.results")  # created right after the last fetch
    cluster.now += 0.01

    assert await directory.exists("b.results") is True
    assert directory.fetches == 2
    assert len(cluster.slept) == 1
    assert abs(cluster.slept[0] - 0.19) < 1e-9  # waited out the minimum interval only


async def test_known_topics_cost_no_fetch_and_missing_ones_are_refused() -> None:
    cluster = _Cluster("a.results")
    directory = cluster.directory()

    assert await directory.exists("a.results") is True
    assert await directory.exists("a.results") is True
    cluster.now += 0.5
    assert await directory.exists("nobody.results") is False
    assert directory.fetches == 2


async def test_concurrent_questions_about_unknown_topics_share_one_fetch() -> None:
    cluster = _Cluster("a.results")
    directory = cluster.directory()
    await directory.exists("a.results")
    cluster.now += 1.0

    answers = await asyncio.gather(*(directory.exists(f"x{n}.results") for n in range(50)))

    assert answers == [False] * 50
    assert directory.fetches == 2  # the first fetch and one shared by all fifty


def test_the_policy_refuses_internal_own_and_unlisted_topics_and_allows_the_default() -> None:
    policy = ReplyTopicPolicy(
        default="llm.results",
        patterns=["*.results"],
        by_tenant={"acme": ["acme.*"]},
        own_topics=["llm.requests", "llm.requests.dlq"],
    )

    assert policy.refusal("llm.results", None) is None
    assert policy.refusal("llm.results", "acme") is None
    assert policy.refusal("team.results", None) is None
    assert policy.refusal("acme.inbox", "acme") is None
    assert "not an allowed reply topic for tenant 'acme'" in (
        policy.refusal("team.results", "acme") or ""
    )
    assert "internal" in (policy.refusal("__consumer_offsets", None) or "")
    assert "own topics" in (policy.refusal("llm.requests", None) or "")
    assert "legal" in (policy.refusal("a b", None) or "")
    assert "legal" in (policy.refusal("..", None) or "")
