"""What ``recsys export`` prints and records about a bundle it wrote: the parity
figures and versions from the bundle's manifest, as printed lines and a
summary dict."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def encoder_report(manifest: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    """(lines, result) of a query-encoder bundle: parity per history length."""
    p = manifest["parity"]
    lines = [f"  length {row['length']:>3}: max |torch - onnx| = {row['max_abs_diff']:.3g}, "
             f"top-{p['k']} identical for {row['topk_agreement']:.2%} of {row['users']} users"
             for row in p["by_length"]]
    lines.append(f"exported {out}: query encoder ({manifest['model']['class']}), embedding_version "
                 f"{manifest['embedding_version']}, opset {manifest['opset']}")
    result = {"bundle": str(out), "kind": "query_encoder", "parity_max_abs_diff": p["max_abs_diff"],
              "parity_min_topk_agreement": p["min_topk_agreement"], "parity_users": p["users"],
              "parity_by_length": p["by_length"], "opset": manifest["opset"],
              "embedding_version": manifest["embedding_version"]}
    return lines, result


def ranker_report(manifest: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
    """(lines, result) of a ranker bundle: parity rows and the versions it pairs with."""
    p = manifest["parity"]
    lines = [f"exported {out}: {p['rows']} parity rows, max |torch - onnx| = {p['max_abs_diff']:.3g} "
             f"(tolerance {p['tolerance']:g}), opset {manifest['opset']}"]
    result = {"bundle": str(out), "kind": "ranker", "parity_max_abs_diff": p["max_abs_diff"], "parity_rows": p["rows"],
              "opset": manifest["opset"], "feature_set_version": manifest["feature_set_version"],
              "compatible_embedding_versions": manifest["compatible_embedding_versions"]}
    return lines, result
