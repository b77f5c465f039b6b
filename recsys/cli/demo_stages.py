"""The export and retrieval stages of ``recsys demo`` (helpers of that command
only; no other command imports them): the ranker of ``configs/rank_train.yaml``
trained by :func:`recsys.training.ranker.fit.fit`, exported to ONNX and scored
through the torch-free runtime (with the demo SASRec as a query encoder), and
the SASRec item table behind an HNSW index bundle."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import build_ranker, build_trainer


def _query_encoder(out: Path, data: Any, split: Any) -> tuple[Any, dict[str, Any]]:
    """The SASRec of ``<out>/model`` as a ``query_encoder.onnx`` bundle and its runtime."""
    from recsys.bench.export import time_calls
    from recsys.export.onnx_encoder import EncoderData, ParitySpec, export_query_encoder
    from recsys.serving.encoder import QueryEncoderRuntime

    t1 = time.perf_counter()
    users = EncoderData(split.test.history, source="demo test-split histories", fingerprint=data.fingerprint,
                        item_ids=data.raw_item_ids())
    # the issue's 1,000-user parity floor; tiny demo worlds check every user
    parity = ParitySpec(lengths=(5, 17, 50), min_users=min(1000, len(split.test.users)))
    m = export_query_encoder(out, out / "export" / "query_encoder", users, parity, name="demo_query")
    encoder = QueryEncoderRuntime(out / "export" / "query_encoder")
    hist = np.stack([np.pad(h[-30:], (30 - len(h[-30:]), 0)) for h in
                     (split.test.history.row(r) for r in range(64))])
    ms = time_calls(lambda x: encoder.top_k(x, k=10), [hist[i:i + 1] for i in range(64)] * 4)
    p = m["parity"]
    print(f"      query encoder: SASRec -> query_encoder.onnx, {p['users']} users at lengths {p['lengths']}: "
          f"max |torch - onnx| {p['max_abs_diff']:.2g}, top-10 identical for {p['min_topk_agreement']:.2%}; "
          f"top-10 of {encoder.n_items} items p50 {np.median(ms):.3f} ms")
    return encoder, {"max_abs_diff": p["max_abs_diff"], "min_topk_agreement": p["min_topk_agreement"],
                     "lengths": p["lengths"], "top10_p50_ms": float(np.median(ms)),
                     "export_s": time.perf_counter() - t1, "embedding_version": m["embedding_version"]}


def ranker_stage(cfg: DictConfig, data: Any, split: Any, out: Path, stage: str) -> dict:
    """``configs/rank_train.yaml`` with ``cfg.ranker_overrides`` (a small DCN-v2 on the
    demo world's impressions) -> ``ranker.onnx`` bundle (and the demo SASRec as a
    query-encoder bundle) in ``<run>/export/`` -> scored through the torch-free
    runtimes: parity, p50 latency, version pairing."""
    import pytorch_lightning as L

    from recsys.data.synthetic_source import load_world
    from recsys.evaluation.binary import roc_auc
    from recsys.evaluation.slates import slate_ndcg
    from recsys.bench.export import make_request, time_calls
    from recsys.export.onnx_ranker import export_ranker, rebuild_net, torch_scores
    from recsys.features.ranker import add_behavioural_features, build_ranker_features
    from recsys.serving.ranker import RankerRuntime
    from recsys.training.ranker.fit import fit
    from recsys.utils.io import write_json_atomic

    t0 = time.perf_counter()
    world = load_world(data.extras_dir, data.extras)
    info: dict = {}
    print(f"{stage} ranker: DCN-v2 on the world's {world.impressions.num_rows} logged impressions -> ONNX -> runtime")
    rcfg = compose("rank_train", overrides=list(cfg.ranker_overrides))
    L.seed_everything(rcfg.seed, verbose=False)
    t_feat = time.perf_counter()
    table = build_ranker_features(world)
    n_base = len(table.dense)
    table = add_behavioural_features(table, world)  # clickstream features as of each request (point in time)
    info["behavioural_features"] = {"n": len(table.dense) - n_base, "version": table.version,
                                    "build_s": time.perf_counter() - t_feat}
    print(f"      features: {len(table.dense) - n_base} behavioural features joined as of each request's time "
          f"({info['behavioural_features']['build_s']:.1f}s, version {table.version})")
    rank_run = out / "ranker_run"
    dm, module = build_ranker(rcfg, table)
    fitted = fit(build_trainer(rcfg, rank_run), module, dm, rank_run, parity_rows=int(rcfg.parity_rows),
                 model_args=OmegaConf.to_container(rcfg.ranker, resolve=True))
    test = dm.split_table("test")
    f = test.features
    bayes = roc_auc(test.label, world.click_probability(f["user"], f["item"], f["position"]))
    info.update(test_auc=fitted["metrics"]["test/auc"], bayes_auc=bayes, train_s=time.perf_counter() - t0)
    write_json_atomic(rank_run / "summary.json", {"data": {"fingerprint": data.fingerprint},
                                                  "test/auc": info["test_auc"], "bayes_auc": bayes})
    encoder = None
    if (out / "model" / "model_args.json").is_file():  # the SASRec of stage 3 as a query encoder
        encoder, info["query_encoder"] = _query_encoder(out, data, split)
    bundle = out / "export" / "ranker"
    m = export_ranker(rank_run, bundle, name="demo_ranker", min_rows=1000,
                      compatible_embedding_versions=[encoder.embedding_version] if encoder else [])
    rt = RankerRuntime(bundle, feature_set_version=dm.table.version, retrieval_bundle=encoder)
    rows = {k: f[k] for k in rt.inputs}
    one = np.flatnonzero(test.request_id == test.request_id[0])  # one logged slate, re-ranked by the runtime
    logits = rt.score({k: v[one] for k, v in rows.items()})
    want = torch_scores(rebuild_net(rank_run / "model")[0], {k: v[one] for k, v in rows.items()})
    rng = np.random.default_rng(cfg.seed)
    reqs = [make_request({k: v[:2000] for k, v in rows.items()}, 100, rng) for _ in range(300)]
    ms = time_calls(rt.score, reqs)
    ndcg = slate_ndcg(test.request_id, test.label, fitted["predictions"], 5)["ndcg"]
    info.update(parity_max_abs_diff=m["parity"]["max_abs_diff"], request_max_abs_diff=float(np.abs(logits - want).max()),
                p50_ms_100_candidates=float(np.median(ms)), slate_ndcg5=ndcg, total_s=time.perf_counter() - t0)
    print(f"      ranker: test AUC {info['test_auc']:.4f} (Bayes {bayes:.4f}), slate NDCG@5 {ndcg:.4f}; "
          f"ranker.onnx parity {m['parity']['max_abs_diff']:.2g} on {m['parity']['rows']} rows; RankerRuntime: "
          f"slate of {len(one)} scored (|torch - onnx| {info['request_max_abs_diff']:.2g}), "
          f"p50 {info['p50_ms_100_candidates']:.3f} ms for 100 candidates ({info['total_s']:.1f}s)")
    return info


def retrieval_stage(out: Path, stage: str) -> dict:
    """The SASRec run's item table and user states (``<run>/embeddings``) -> an HNSW
    bundle with recall@10 against exact search measured at build -> queried through
    the torch-free :class:`recsys.serving.index.IndexRuntime` with seen items excluded."""
    from recsys.retrieval.build import IndexSpec, build_bundle
    from recsys.serving.index import IndexRuntime

    t0 = time.perf_counter()
    bundle = out / "export" / "index"
    m = build_bundle(out, bundle, IndexSpec(name="hnsw", factory="HNSW32", search_params={"efSearch": 64}))
    rt = IndexRuntime(bundle, threads=1)
    users = rt.user_ids[:3]
    hits = rt.search_users(users, k=10, exclude_seen=True)
    ms = []
    for u in rt.user_ids[:200]:
        t = time.perf_counter()
        rt.search_users([u], k=10, exclude_seen=True)
        ms.append((time.perf_counter() - t) * 1e3)
    info = {"index": m["index_spec"]["factory"],
            "recall@10": m["recall@10"], "n_items": len(rt.item_ids), "build_s": m["build_s"],
            "query_p50_ms": float(np.median(ms)), "total_s": time.perf_counter() - t0}
    print(f"{stage} retrieval: SASRec item table -> HNSW32 over {info['n_items']} items, recall@10 vs exact "
          f"{m['recall@10']:.3f} (held-out queries), built in {m['build_s']:.2f}s; IndexRuntime (no torch): "
          f"top-10 with seen items excluded, p50 {info['query_p50_ms']:.3f} ms/user")
    for u, ids in zip(users, hits.ids):
        print(f"      user {u}: {' '.join(map(str, ids[:10]))}")
    return info


def _serve_block(exp: Path) -> dict[str, Any]:
    """The ``serve:`` block of the demo's service (and of the loop's champion)."""
    return {
        "bundles": {"encoder": str(exp / "query_encoder"), "index": str(exp / "index"), "ranker": str(exp / "ranker"),
                    "catalogue": str(exp / "catalogue.parquet"), "users": str(exp / "users.parquet"),
                    "events": str(exp / "events.parquet")},
        "fallback": {"default": ["personalised", "segment_popularity", "global_popularity", "static"],
                     "email": ["global_popularity", "static"]},  # an offline-first channel
        "n_candidates": 200, "n_rank": 100, "caps": {"user_item": {"limit": 3, "window_s": 86400.0}}}


def loop_stage(out: Path, data: Any, stage: str, n_explore: int, n_canary: int, n_bootstrap: int) -> dict:
    """One iteration of the online loop (:func:`recsys.bench.online_loop.run_loop`) on the
    demo's bundles: the champion (encoder + HNSW + DCN-v2, as served by the service
    stage) explores, its logs are joined, the ANN-only challenger (no ranker) is
    estimated by OPE from them (the exploration mixes in the challenger's own slates,
    so its estimate has support), both run as canary arms with clicks from the world's
    true click model, and ``ab analyze`` gives the verdict."""
    from recsys.bench.online_loop import LoopPlan, run_loop
    from recsys.data.synthetic_source import load_world

    t0 = time.perf_counter()
    world = load_world(data.extras_dir, data.extras)
    plan = LoopPlan(n_explore=n_explore, n_canary=n_canary, n_bootstrap=n_bootstrap)
    print(f"{stage} online loop: the champion (the service above) explores for {n_explore} requests of world users "
          f"over loopback ({plan.exploration['policy']} T={plan.exploration['temperature']} over its top "
          f"{plan.exploration['pool']}; {plan.mixture_share:.0%} of the slates are the champion's or the challenger's "
          f"greedy slate, drawn at random), clicks from the world's true click model")
    res = run_loop(world, _serve_block(out / "export"), {"ann_only": {"ranker": None}}, out / "online_loop", plan)
    j = res["logs_join"]
    print(f"      logs join: {j.get('requests', '?')} requests, {j.get('rows', '?')} rows -> "
          f"{out / 'online_loop' / 'ope_log.parquet'}")
    rows = res["variants"]
    for name in ("champion", "ann_only"):
        r = rows[name]
        print(f"      {name:<10} OPE ({res['estimator']}) from the champion's log {r['ope']:.3f} "
              f"[{r['ope_ci'][0]:.3f}, {r['ope_ci'][1]:.3f}] (ESS {r['ess']:.0f}) | canary, true clicks/slate "
              f"{r['online']:.3f} [{r['online_ci'][0]:.3f}, {r['online_ci'][1]:.3f}] over {r['online_requests']} "
              f"requests")
        if r["ess"] < plan.min_ess:
            print(f"      {'':<10} ESS {r['ess']:.0f} < {plan.min_ess:g}: too few of the champion's explored slates "
                  f"match this policy for a reliable estimate at this demo size (the measured study: "
                  f"docs/online_loop.md)")
    ab = res["ab"]
    v = ab["verdicts"]["ann_only"]
    srm = ab["srm"]
    print(f"      canary verdict (ab analyze, CUPED): ann_only vs champion {v['verdict']} (lift {v['lift']:+.1%}, "
          f"p {v['cuped_p_value']:.3g}); SRM p {srm.get('p_value', float('nan')):.3g}")
    return {"variants": rows, "verdict": v, "srm": srm, "total_s": time.perf_counter() - t0}


def service_stage(out: Path, data: Any, stage: str) -> dict:
    """The decision service (``recsys serve``'s app) on the demo's bundles: the SASRec
    query encoder, the HNSW index, the DCN-v2 ranker with its behavioural features
    (warm-started from the world's events), the world's catalogue and users, served
    by uvicorn on a loopback port; a few requests over HTTP; slates and levels."""
    import json
    import threading
    import urllib.request

    import pyarrow.parquet as pq
    import uvicorn

    from recsys.data.synthetic_source import load_world
    from recsys.features.ranker import serving_tables
    from recsys.service.app import create_app
    from recsys.service.config import serve_config
    from recsys.service.decision_log import DECISION_SCHEMA, read_log

    t0 = time.perf_counter()
    world = load_world(data.extras_dir, data.extras)
    exp = out / "export"
    catalogue, users = serving_tables(world)
    pq.write_table(catalogue, exp / "catalogue.parquet")
    pq.write_table(users, exp / "users.parquet")
    pq.write_table(world.events, exp / "events.parquet")
    cfg = serve_config({**_serve_block(exp),
                        "decision_log": {"directory": str(out / "decision_log"), "flush_interval_s": 0.5}})
    app = create_app(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"

    def call(method: str, path: str, body: dict) -> dict:
        req = urllib.request.Request(base + path, json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    known = str(app.state.holder.current.index.user_ids[0])
    enc_items = app.state.holder.current.encoder.item_ids
    call("POST", "/v1/events", {"events": [{"user_id": "visitor_1", "item_id": str(i), "event_type": "view",
                                            "channel": "web"} for i in enc_items[[11, 23, 42]]]})
    call("PUT", "/v1/users/visitor_3/consent", {"granted": False})
    asks = [("known user, web", known, "web"), ("new visitor after 3 views, web", "visitor_1", "web"),
            ("new visitor, no events, web", "visitor_2", "web"), ("opted-out visitor, web", "visitor_3", "web"),
            ("known user, email", known, "email")]
    info: dict[str, Any] = {"requests": []}
    print(f"{stage} decision service: encoder + HNSW index + DCN-v2 ranker (behavioural features warm-started from "
          f"{world.events.num_rows} events) served on {base} (uvicorn, in-process state)")
    for label, user, channel in asks:
        r = call("POST", "/v1/recommend", {"user_id": user, "channel": channel, "k": 5})
        info["requests"].append({"label": label, "level": r["level"], "items": r["items"],
                                 "total_ms": r["latency_ms"].get("total")})
        print(f"      {label:<32} level={r['level']:<18} items={' '.join(r['items'])}  "
              f"({r['latency_ms'].get('total', 0):.1f} ms)")
    server.should_exit = True
    thread.join(timeout=10)
    n_logged = read_log(out / "decision_log", "decisions", DECISION_SCHEMA).num_rows
    info.update(decision_log_rows=n_logged, total_s=time.perf_counter() - t0)
    print(f"      decision log: {n_logged} rows (one per slate position) in {out / 'decision_log'}")
    return info
