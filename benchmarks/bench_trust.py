"""What trust costs. (1) Calibration at the end of a cached-feature training run (the default recipe's linear
probe on histology phantoms): calibration seconds as a share of the whole run. Goal: < 10%. (2) Scoring with
the OOD detector (features from the same forward pass) and prediction sets, against plain scoring, on the same
images in one process. Goal: < 5% extra."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from oncolens.data import generate_phantoms, save_manifest, scan, split
from oncolens.predictor import Predictor
from oncolens.runtime import tune_cpu_runtime
from oncolens.training import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=600, help="phantoms (half of them histology)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_phantoms(Path(tmp) / "ph", n=args.images, size=args.size, seed=0, per_patient=2)
        frame = split(scan(root / "histo").manifest, test=0.2, val=0.15, seed=0)
        csv = save_manifest(frame, Path(tmp) / "s.csv")
        for cache in ("empty", "warm"):  # the first run fills the feature cache, the second reads it
            started = time.perf_counter()
            run = train(TrainConfig(data=str(csv), runs_dir=f"{tmp}/runs", name=f"r-{cache}", tta="none",
                                    finetune="off"))
            total = time.perf_counter() - started
            calibration = json.loads((run.run_dir / "metrics.json").read_text())["calibration"]
            share = calibration["seconds"] / total
            print(f"frozen-backbone training run, feature cache {cache} (fingerprint, features, probe, calibration): "
                  f"{total:.1f} s; calibration {calibration['seconds']:.2f} s = {share:.1%} of the run (goal < 10%)")
        paths = frame.loc[frame["split"] == "test", "path"].tolist() * 4
        plain = Predictor.from_bundle(run.bundle_path)
        plain.trust, plain.features = None, False  # the same bundle, scored without the trust layer
        trusted = Predictor.from_bundle(run.bundle_path)
        plain.predict_files(paths), trusted.predict_files(paths)  # warm-up
        ratios, times = [], []
        for round_ in range(args.rounds):  # alternating order: drift in machine speed does not favour either
            order = (plain, trusted) if round_ % 2 == 0 else (trusted, plain)
            seconds = {}
            for predictor in order:
                started = time.perf_counter()
                predictor.predict_files(paths)
                seconds[predictor is trusted] = time.perf_counter() - started
            times.append((seconds[False], seconds[True]))
            ratios.append(seconds[True] / seconds[False])
        ratio = statistics.median(ratios)
        print(f"predict {len(paths)} files: plain {statistics.median(t[0] for t in times):.2f} s, with sets + "
              f"{trusted.trust.default_detector} OOD {statistics.median(t[1] for t in times):.2f} s: "
              f"{ratio - 1:+.1%} (goal < +5%; median of {args.rounds} alternating rounds)")
        scores = trusted.bundle.score(paths, features=True)
        started = time.perf_counter()
        for _ in range(10):
            trusted.trust.assess(scores)
        print(f"the trust layer alone (sets + {trusted.trust.default_detector} on {len(paths)} scored images): "
              f"{(time.perf_counter() - started) / 10 * 1000:.1f} ms")

if __name__ == "__main__":
    main()
