"""What `svfrd verify-models` prints: one line per file, then how long it took."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from svfrd.weights.lock import LOCK_NAME, files_to_verify


def print_verification(models_dir: Path, full: bool = False, console: Console | None = None) -> bool:
    from svfrd.weights.verify import verify_models

    console = console or Console(highlight=False, soft_wrap=True)
    models_dir = Path(models_dir)
    total = sum((models_dir / n).stat().st_size for n in files_to_verify(models_dir) if (models_dir / n).is_file())
    started = time.perf_counter()
    with Progress(TextColumn("reading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("read", total=total)
        report = verify_models(models_dir, full=full, progress=lambda n: progress.advance(task, n))
    seconds = time.perf_counter() - started
    for finding in report.findings:
        if finding.ok:
            how = "unchanged since verified" if finding.skipped else escape(finding.checked)
            console.print(f"[green]✓[/] {escape(finding.path)}: {how}")
        else:
            console.print(f"[red]✗[/] {escape(finding.problem or '')}")
    where = escape(str(models_dir))
    if report.ok:
        written = f"; {LOCK_NAME} written" if report.lock_written else ""
        console.print(f"[bold green]{len(report.findings)} files verified in {where}[/] ({seconds:.1f} s{written})")
    else:
        console.print(f"[bold red]{len(report.problems)} of {len(report.findings)} files in {where} are missing or "
                      f"bad[/] ({seconds:.1f} s); `svfrd fetch-models` fetches them again")
    return report.ok
