"""The consolidation job end to end on a real MLflow store: gate decisions, run layout, crashes.

World: users stick to one of four item clusters. The champion learns an old day; on the
recent day every cluster gets new items. A challenger trained with EWC on old + recent
replay learns the new items (recent NDCG@10 up from 0: the champion never saw them) while
keeping the old clusters (old-slice NDCG@10 within tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest
from consolidation_fixtures import DAY_MS, T0_MS, cluster_events, fresh_tracking_uri, one_torch_thread  # noqa: F401

from consolidation.evaluate import evaluate
from consolidation.gate import decide
from consolidation.job import bootstrap_champion, consolidate
from consolidation.registry import ModelRegistry
from consolidation.sampling import sample_replay
from consolidation.train import ConsolidationConfig
from fastslow.errors import ConfigError
from models.ranking import top_k
from models.slow import SlowRanker

OLD = cluster_events(seed=1)
NEW = cluster_events(start_ms=T0_MS + DAY_MS, item_prefix="n", first_id=10_000, seed=2)
CONFIG = ConsolidationConfig(epochs=3, probe_fraction=0.2, ewc_lambda=1000.0, tolerance=0.02)


class Boom(RuntimeError):
    """Stands for any failure in the middle of training."""


def _small_ranker() -> SlowRanker:
    return SlowRanker(dim=16, epochs=20, batch_size=64)


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    registry = ModelRegistry(fresh_tracking_uri(tmp_path), "job-under-test")
    bootstrap_champion(registry, OLD, _small_ranker(), CONFIG, show_progress=False)
    return registry


def _sample(registry: ModelRegistry):
    since = int(registry.version_info(registry.champion_version()).tags["until_ms"])
    return sample_replay([OLD, NEW], 2000, since_ms=since, recent_fraction=0.5)


def test_bootstrap_registers_and_promotes_the_first_champion(registry):
    (only,) = registry.versions()
    assert only.aliases == ("challenger", "champion")
    assert only.tags["gate.decision"] == "promoted"
    assert int(only.tags["until_ms"]) == T0_MS + DAY_MS - DAY_MS // 480   # the last old event
    assert registry.load_fisher(only.version) is not None


def test_good_challenger_is_promoted_and_the_run_records_everything(registry):
    sample = _sample(registry)
    result = consolidate(registry, sample, CONFIG, show_progress=False)
    assert result.promoted, result.reason
    assert registry.champion_version() == result.version == 2
    assert result.metrics["challenger_recent_ndcg_at_10"] > result.metrics["champion_recent_ndcg_at_10"]
    run = registry.client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gate.decision"] == "promoted"
    assert run.data.params["sample_digest"] == sample.digest == result.sample_digest
    assert run.data.params["champion_version"] == "1"
    assert {"champion_old_ndcg_at_10", "challenger_old_ndcg_at_10", "challenger_recent_hr_at_10",
            "seconds_train"} <= set(run.data.metrics)
    losses = registry.client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(CONFIG.epochs))
    artifacts = {a.path for a in registry.client.list_artifacts(result.run_id)}
    assert {"fisher", "sample"} <= artifacts
    version = registry.version_info(2)
    assert version.aliases == ("challenger", "champion")
    assert version.tags["parent_version"] == "1"


def test_regressing_challenger_is_kept_out_and_the_reason_recorded(registry):
    wrecking = ConsolidationConfig(**{**CONFIG.__dict__, "lr": 1.0, "ewc_lambda": 0.0})
    result = consolidate(registry, _sample(registry), wrecking, show_progress=False)
    assert not result.promoted
    assert registry.champion_version() == 1
    assert registry.version_of("challenger") == result.version == 2
    run = registry.client.get_run(result.run_id)
    assert run.data.tags["gate.decision"] == "rejected"
    assert "NDCG@10" in run.data.tags["gate.reason"] and run.data.tags["gate.reason"] == result.reason
    assert run.data.params["gate_promote"] == "False"
    assert registry.version_info(2).tags["gate.decision"] == "rejected"


def test_crash_mid_training_leaves_the_champion_and_the_next_run_succeeds(registry):
    sample = _sample(registry)

    def crash(epoch: int, loss: float) -> None:
        if epoch == 1:
            raise Boom("killed in epoch 1")

    with pytest.raises(Boom):
        consolidate(registry, sample, CONFIG, on_epoch=crash, show_progress=False)
    assert registry.champion_version() == 1
    assert [v.version for v in registry.versions()] == [1]
    failed = registry.client.search_runs([registry.experiment_id()], "attributes.status = 'FAILED'")
    assert len(failed) == 1
    result = consolidate(registry, sample, CONFIG, show_progress=False)
    assert result.version == 2 and result.promoted
    assert registry.champion_version() == 2


def test_without_a_champion_the_job_trains_the_first_one(tmp_path):
    registry = ModelRegistry(fresh_tracking_uri(tmp_path), "empty")
    sample = sample_replay([OLD], 1000)
    result = consolidate(registry, sample, CONFIG, show_progress=False, new_ranker=_small_ranker)
    assert result.promoted and registry.champion_version() == result.version == 1


def test_distillation_examples_reach_the_challenger(registry):
    champion = registry.load("champion")
    calls = []

    def distill(ranker: SlowRanker):
        calls.append(ranker)
        pairs = [("u0", "captain")] * 200   # a preference only the fast path saw
        return ranker.build_examples(*zip(*pairs), initial_history={"u0": ["i0-1"]}, weights=[2.0] * 200)

    result = consolidate(registry, _sample(registry), CONFIG, distill=distill, show_progress=False)
    challenger = registry.load(result.version)
    assert len(calls) == 1 and calls[0] is not champion
    assert "captain" not in registry.load(1).items          # the champion was never touched
    scores = challenger.item_vectors @ challenger.user_vector("u0", ["i0-1"]) + challenger.item_biases
    assert challenger.items.get("captain") in top_k(scores, 10).tolist()


def test_evaluate_matches_top_k_rankings():
    ranker = SlowRanker(dim=8, epochs=5, batch_size=64)
    ranker.fit(ranker.build_examples(OLD.column("user_id").to_pylist(), OLD.column("item_id").to_pylist()))
    probes = sample_replay([OLD.slice(0, 120)], 120)
    gains, hits = [], []
    for n in range(len(probes)):
        history = probes.history_of(n)
        scores = ranker.item_vectors @ ranker.user_vector(probes.users[n], history) + ranker.item_biases
        top = [ranker.items.id_of(int(r)) for r in top_k(scores, 10, ranker.items.lookup(history))]
        hit = probes.items[n] in top
        hits.append(hit)
        gains.append(1.0 / np.log2(top.index(probes.items[n]) + 2) if hit else 0.0)
    got = evaluate(ranker, probes, k=10)
    assert got["events"] == 120
    assert got["hr_at_10"] == pytest.approx(np.mean(hits))
    assert got["ndcg_at_10"] == pytest.approx(np.mean(gains))


@pytest.mark.parametrize("challenger, promote, words", [
    ({"recent_ndcg_at_10": 0.30, "old_ndcg_at_10": 0.50}, True, "recent NDCG@10 0.2000 -> 0.3000"),
    ({"recent_ndcg_at_10": 0.20, "old_ndcg_at_10": 0.495}, True, "change -1.00%"),      # equal recent is fine
    ({"recent_ndcg_at_10": 0.19, "old_ndcg_at_10": 0.60}, False, "recent NDCG@10 is worse"),
    ({"recent_ndcg_at_10": 0.40, "old_ndcg_at_10": 0.48}, False, "fell 4.00%"),
    ({"recent_ndcg_at_10": 0.40, "old_ndcg_at_10": 0.0, "old_events": 0}, True, "forgetting not checked"),
    ({"recent_ndcg_at_10": 0.40, "old_ndcg_at_10": 0.5, "recent_events": 0}, False, "no recent probe events"),
])
def test_gate_decisions(challenger, promote, words):
    champion = {"recent_ndcg_at_10": 0.20, "old_ndcg_at_10": 0.50, "recent_events": 10, "old_events": 10}
    decision = decide(champion, {"recent_events": 10, "old_events": 10, **challenger}, tolerance=0.02)
    assert decision.promote is promote
    assert words in decision.reason


def test_gate_refuses_a_nonsense_tolerance():
    with pytest.raises(ConfigError, match="tolerance"):
        decide({}, {}, tolerance=2.0)


def test_commands_consolidate_list_and_promote(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from consolidation.sampling import record_deleted_user
    from fastslow.cli import app
    from streaming.archive import ArchiveSegment, EventArchive, archive_dir
    from streaming.normalize import EVENT_SCHEMA

    data = tmp_path / "data"
    segment = ArchiveSegment(partition=0)   # the worker's archive holds the old day
    segment.add(OLD.append_column("context", pa.nulls(OLD.num_rows, pa.string())).cast(EVENT_SCHEMA),
                offsets=range(OLD.num_rows))
    EventArchive(archive_dir(data, "interactions"), durable=False).write(segment)
    record_deleted_user(data / "deleted_users.txt", "u3")
    pq.write_table(pa.concat_tables([OLD, NEW]), tmp_path / "all.parquet")
    env = {"FASTSLOW_DATA_DIR": str(data), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "FASTSLOW_MLFLOW_TRACKING_URI": fresh_tracking_uri(data), "FASTSLOW_MODEL_NAME": "cli-test"}
    runner = CliRunner()
    run = lambda *args: runner.invoke(app, list(args), env=env, catch_exceptions=False)  # noqa: E731
    first = run("consolidate", "--sample-size", "1000")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["version"] == 1 and summary["promoted"]
    u3_events = OLD.column("user_id").to_pylist().count("u3")
    assert summary["sample"]["deleted_skipped"] == u3_events > 0
    assert summary["sample"]["size"] == OLD.num_rows - u3_events
    second = run("consolidate", "--events", str(tmp_path / "all.parquet"), "--epochs", "2", "--tolerance", "0.9")
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["version"] == 2 and summary["metrics"]["champion_recent_events"] > 0
    assert summary["sample"]["since_ms"] == T0_MS + DAY_MS - DAY_MS // 480   # the champion's last event
    listed = json.loads(run("models", "--json").stdout)
    assert [v["version"] for v in listed] == [2, 1]
    assert listed[0]["decision"] in ("promoted", "rejected") and listed[0]["reason"]
    assert "cli-test" in run("models").stdout
    assert run("promote", "1").stdout.strip().endswith("-> v1")
    assert ModelRegistry(env["FASTSLOW_MLFLOW_TRACKING_URI"], "cli-test").champion_version() == 1
    missing = run("promote", "7")
    assert missing.exit_code == 2 and "version 7 does not exist" in missing.output


def test_consolidate_command_refuses_an_empty_archive(tmp_path):
    from typer.testing import CliRunner

    from fastslow.cli import app

    env = {"FASTSLOW_DATA_DIR": str(tmp_path), "FASTSLOW_MLFLOW_TRACKING_URI": fresh_tracking_uri(tmp_path)}
    result = CliRunner().invoke(app, ["consolidate"], env=env)
    assert result.exit_code == 2 and "no events to consolidate" in result.output


def test_leftovers_of_a_run_killed_mid_registration_do_not_break_the_next(registry):
    # What a kill -9 between registering a version and moving the champion leaves behind: a run
    # still RUNNING with its Fisher logged, and a version holding only the challenger alias.
    champion = registry.load("champion")
    run = registry.client.create_run(registry.experiment_id())
    registry.log_fisher(run.info.run_id, {"item_out.weight": champion.net.item_out.weight.detach() * 0 + 1e6})
    with registry.start_run("killed") as half:
        orphan = registry.register(registry.log_ranker(champion), half.info.run_id)
    registry.set_alias("challenger", orphan)
    assert registry.champion_version() == 1
    result = consolidate(registry, _sample(registry), CONFIG, show_progress=False)
    assert result.previous_champion == 1 and result.version == orphan + 1
    assert result.promoted and registry.champion_version() == result.version
    assert registry.version_of("challenger") == result.version


def _policy_stream():
    import pyarrow as pa

    from evaluation.stream import EventStream
    return EventStream.from_table(pa.concat_tables([OLD, NEW]))


def test_ewc_policy_consolidates_on_schedule_from_past_events_only():
    from consolidation.policy import EwcPolicy
    from evaluation.ablations import SlowPolicy
    from evaluation.protocol import prequential

    stream = _policy_stream()
    config = ConsolidationConfig(epochs=10, probe_fraction=0.2, tolerance=0.1)
    policy = EwcPolicy(_small_ranker(), every=120, sample_size=2000, config=config)
    result = prequential(stream, policy, warmup=0.5)
    assert [c["learned"] for c in policy.log] == [600, 720, 840, 960]
    for entry in policy.log:   # the newest event sampled is the last one learned, never a later one
        assert entry["until_ms"] == round(stream.timestamps[entry["learned"] - 1] * 1000)
    assert any(entry["promoted"] for entry in policy.log)
    frozen = prequential(stream, SlowPolicy(_small_ranker()), warmup=0.5)
    assert frozen.hr == 0.0 < result.hr   # the recent period's new items reach it only by consolidation


def test_ewc_policy_can_run_the_tracked_job(tmp_path):
    from consolidation.policy import EwcPolicy
    from evaluation.protocol import prequential

    registry = ModelRegistry(fresh_tracking_uri(tmp_path), "replay-tracked")
    config = ConsolidationConfig(epochs=5, probe_fraction=0.2, tolerance=0.1)
    policy = EwcPolicy(_small_ranker(), every=240, sample_size=2000, config=config, registry=registry)
    prequential(_policy_stream(), policy, warmup=0.5)
    assert len(registry.versions()) == 1 + len(policy.log) == 3
    promoted = [entry["promoted"] for entry in policy.log]
    assert registry.champion_version() == max([1] + [2 + n for n, p in enumerate(promoted) if p])


@pytest.mark.slow
def test_a_context_model_is_bootstrapped_and_consolidated_on_point_in_time_feast_context(tmp_path):
    """The first champion and its challenger train on `get_historical_features` frames: a
    context-built ranker's context layers learn (they start at zero), and the challenger
    registered by the job reads context too."""
    from features.context import FeatureContext
    from features.repository import apply_repo
    from features.store import FeatureStoreClient

    client = FeatureStoreClient(apply_repo(tmp_path / "feast").repo_path)
    for table in (OLD, NEW):   # micro-batches, as the worker pushes: each writes its keys' newest rows
        for start in range(0, table.num_rows, 20):
            client.push_events(table.slice(start, 20))
    features = FeatureContext(client)
    registry = ModelRegistry(fresh_tracking_uri(tmp_path), "context-job")
    ranker = SlowRanker(dim=16, epochs=20, batch_size=64, context=features.spec.as_dict())
    first = bootstrap_champion(registry, OLD, ranker, CONFIG, show_progress=False, features=features)
    champion = registry.load(first.version)
    assert champion.uses_context
    learned = lambda ranker: np.concatenate([ranker.net.item_context.weight.detach().numpy().ravel(),  # noqa: E731
                                             ranker.net.category.weight.detach().numpy().ravel()])
    assert np.abs(learned(champion)).sum() > 0.0   # the item context layers (zero at start) learned
    result = consolidate(registry, _sample(registry), CONFIG, show_progress=False, features=features)
    challenger = registry.load(result.version)
    assert challenger.uses_context and challenger.context == champion.context
    assert not np.allclose(learned(challenger), learned(champion))
