"""``bkdbench bench``: bkdbench's training throughput against a reference-style pipeline, one JSON file.

``register(app)`` adds the command; the measuring lives in ``bkdbench.bench`` (Ray-free, CLI-free).
"""
from __future__ import annotations

from typing import Optional

import typer

from bkdbench.cli.console import check_device, console, fail, note
from bkdbench.cli.options import PluginOpt, use_plugins


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


DATASETS = ("cifar100-lt-synthetic", "imagenet-lt-synthetic")


def bench(
    dataset: str = typer.Option(DATASETS[0], "--dataset", help="cifar100-lt-synthetic: training throughput at 32 px "
                                "(ResNet-32, BKD, packing); imagenet-lt-synthetic: the large benchmarks' data path "
                                "(decode once, batched crops at 224 and 112 px) against a DataLoader of PIL transforms."),
    quick: bool = typer.Option(False, "--quick", help="Seconds, tiny sizes: checks that it runs; not figures to quote."),
    full: bool = typer.Option(False, "--full", help="Longer and more windows (several minutes on 2 CPU cores)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    pack: Optional[int] = typer.Option(None, "--pack", min=0, help="Packed students to measure (default 8; 0 skips the teacher/packed part)."),
    strategy: str = typer.Option("auto", "--strategy", help="Packing: auto (loop on CPU, grouped on CUDA), loop or grouped."),
    compare_strategies: bool = typer.Option(False, "--compare-strategies", help="Also measure the other packing strategy."),
    bf16: bool = typer.Option(True, "--bf16/--no-bf16", help="CPU: also measure bkdbench under bf16 autocast (reported apart)."),
    compile: bool = typer.Option(False, "--compile", help="Also measure bkdbench with torch.compile (compilation time excluded, reported)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch intra-op threads (default: torch's choice)."),
    results: Optional[str] = typer.Option(None, "--results", "--storage", help="Results folder or s3://, gs:// URI (default $BKDBENCH_RESULTS or ./results); the JSON goes to <results>/bench/."),
    plugin: list[str] = PluginOpt,
):
    """Training images/s, seconds per CIFAR-100-LT IF100 epoch and peak memory: a reference-style
    DataLoader pipeline against bkdbench's, alternated in one process; also BKD with a teacher and K
    packed students. Writes one JSON file under <results>/bench/."""
    from bkdbench.leaderboard.store import LeaderboardError, check_writable
    from bkdbench.paths import results_dir

    use_plugins(plugin)  # e.g. a model registered by a plugin, for the same checks as every command
    if quick and full:
        fail("--quick and --full exclude each other")
    if dataset not in DATASETS:
        fail(f"--dataset takes one of: {', '.join(DATASETS)} (got {dataset!r})")
    if dataset == "imagenet-lt-synthetic":
        cifar_only = [name for name, given in (("--pack", pack is not None), ("--compile", compile),
                                               ("--compare-strategies", compare_strategies),
                                               ("--strategy", strategy != "auto")) if given]
        if cifar_only:
            fail(f"{', '.join(cifar_only)}: only for --dataset cifar100-lt-synthetic")
        return _bench_large(quick, full, device, threads, results)
    try:
        folder = results_dir(results) / "bench"
        check_writable(folder)
        check_device(device)
        from bkdbench.bench import config_for
        from bkdbench.models.packing import STRATEGIES

        if strategy not in STRATEGIES:
            raise ValueError(f"unknown packing strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        config = config_for("quick" if quick else "full" if full else "default", pack=pack, strategy=strategy,
                            bf16=bf16, compile=compile, compare_strategies=compare_strategies)
    except (LeaderboardError, ValueError) as exc:
        fail(str(exc))

    import torch

    from bkdbench.bench import run_bench, write_bench

    if threads:
        torch.set_num_threads(threads)
    with console.status("measuring") as status:
        result = run_bench(config, device=device, progress=lambda msg: status.update(msg))
    path = write_bench(result, folder)
    _print(result)
    if quick:
        note("--quick: tiny sizes, for checking that the bench runs; quote the default or --full figures")
    console.print(f"wrote {path}")


def _print(result: dict) -> None:
    from rich.table import Table

    cfg, machine = result["config"], result["machine"]
    table = Table(title=f"bkdbench bench on {result['device']} ({machine['cpu_model']}, {machine['logical_cpus']} CPUs, "
                        f"{machine['torch_threads']} torch threads)",
                  caption=f"{cfg['model']}, batch {cfg['batch_size']}, {cfg['images']} images per epoch; "
                          "median over windows \\[min–max]")
    for col in ("pipeline", "images/s", "s/epoch", "peak MB"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    for name, p in result["pipelines"].items():  # what each pipeline is: "description" in the JSON
        lo, hi = p["images_per_second_range"]
        table.add_row(name, f"{p['images_per_second']:.0f} [{lo:.0f}–{hi:.0f}]", f"{p['seconds_per_epoch']:.1f}",
                      f"{p['peak_memory_mb']:.0f}")
    console.print(table)
    lines = [("bkdbench / reference", result["ratio"], result["ratio_range"])]
    for key, label in (("bf16_speedup", "bf16 / fp32 (bkdbench)"), ("compile_speedup", "compiled / eager"),
                       ("packed_vs_separate", f"{cfg['pack']} packed / separate BKD (aggregate)"),
                       ("packed_loop_vs_separate", f"{cfg['pack']} packed (loop) / separate BKD"),
                       ("packed_grouped_vs_separate", f"{cfg['pack']} packed (grouped) / separate BKD")):
        if key in result:
            lines.append((label, result[key]["median"], result[key]["range"]))
    for label, med, (lo, hi) in lines:
        console.print(f"{label}: [bold]{med:.2f}×[/] (per-round range {lo:.2f}–{hi:.2f})")
    if result["device_type"] == "cpu":
        cpu = result["ratio_cpu"]
        console.print(f"bkdbench / reference per CPU-second (process + loader workers): {cpu['median']:.2f}× "
                      f"(per-round range {cpu['range'][0]:.2f}–{cpu['range'][1]:.2f}; least moved by other load "
                      "with --threads 1)")
    if "bkd_200_epochs_estimate" in result:
        est = result["bkd_200_epochs_estimate"]
        console.print(f"200-epoch CIFAR-100-LT IF100 BKD student, estimated: {est['seconds'] / 3600:.2f} h")
    load = machine.get("load_average_start")
    if load and machine.get("logical_cpus") and load[0] > 0.5 * machine["logical_cpus"]:
        note(f"load average {load[0]:.1f} on {machine['logical_cpus']} CPUs at the start: other work shared the machine")


def _bench_large(quick: bool, full: bool, device: Optional[str], threads: Optional[int], results: Optional[str]) -> None:
    from bkdbench.leaderboard.store import LeaderboardError, check_writable
    from bkdbench.paths import results_dir

    try:
        folder = results_dir(results) / "bench"
        check_writable(folder)
        check_device(device)
    except (LeaderboardError, ValueError) as exc:
        fail(str(exc))
    import torch

    from bkdbench.bench import write_bench
    from bkdbench.bench.imagenet import PRESETS, run_large_bench

    if threads:
        torch.set_num_threads(threads)
    config = PRESETS["quick" if quick else "full" if full else "default"]
    with console.status("measuring") as status:
        result = run_large_bench(config, device=device, progress=lambda msg: status.update(msg))
    path = write_bench(result, folder, prefix="bench-imagenet-lt")
    _print_large(result)
    if quick:
        note("--quick: tiny sizes, for checking that the bench runs; quote the default or --full figures")
    console.print(f"wrote {path}")


def _print_large(result: dict) -> None:
    from rich.table import Table

    cfg, machine, files = result["config"], result["machine"], result["files"]
    table = Table(title=f"bkdbench bench --dataset imagenet-lt-synthetic on {result['device']} ({machine['cpu_model']}, "
                        f"{machine['logical_cpus']} CPUs, {machine['torch_threads']} torch threads)",
                  caption=f"{files['count']} JPEGs ({files['megabytes']:.0f} MB); reference: {cfg['num_workers']} loader "
                          f"workers; batch {cfg['batch_size']} alone, {cfg['model_batch_size']} with {cfg['model']}; "
                          "median over windows \\[min–max]; s/epoch: an ImageNet-LT epoch (115,846 images)")
    for col in ("crop", "pipeline", "images/s", "s/epoch"):
        table.add_column(col, justify="left" if col in ("crop", "pipeline") else "right")
    for size, part in result["sizes"].items():
        for name, p in part["pipelines"].items():
            lo, hi = p["images_per_second_range"]
            table.add_row(f"{size}px", name, f"{p['images_per_second']:.0f} [{lo:.0f}–{hi:.0f}]",
                          f"{p['seconds_per_epoch']:.0f}")
    console.print(table)
    for size, part in result["sizes"].items():
        d, pr, sr = part["decode"], part["pipeline_ratio"], part["step_ratio"]
        console.print(f"{size}px: decode once into the {part['store_size']}px store: {d['images_per_second']:.0f} images/s "
                      f"({d['processes']} processes); bkdbench / reference, pipeline alone: [bold]{pr['median']:.2f}×[/] "
                      f"(per-round {pr['range'][0]:.2f}–{pr['range'][1]:.2f}); with a {cfg['model']} step: "
                      f"[bold]{sr['median']:.2f}×[/] ({sr['range'][0]:.2f}–{sr['range'][1]:.2f})")
