"""One console line for a failed Snakemake job: its rule and the last error line of its log.

Every rule runs `... > {log} 2>&1`, so when a job fails the console shows Snakemake's
"Error in rule" block and the cause sits in the log. The jobs' shell prefix
(rules/common.smk) traps the failing command and runs this module on it:

    python -m spadec.job_errors "$BASH_COMMAND"
    -> ERROR in rule train_eagle: ValueError: ... (log: logs/tiny/train_eagle_dense.log)

The trap knows only the command line, so the rule is read off its script
(`$SPADEC_SCRIPTS/<rule>.py`: each rule's script is named after it, a test keeps it so)
and the log off its `> <log>` redirection. This never fails the job itself: it prints
what it can and exits 0 (the trap exits with the job's status).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# "ValueError: ...", "spadec.artefacts.ArtefactError: ...", "torch.OutOfMemoryError: ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")
# Launchers that report a child's failure after the child's own error: their line says
# only that a child failed.
WRAPPER_ERRORS = ("ChildFailedError", "CalledProcessError")
RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]:\s*")  # torchrun's per-rank prefix
SCRIPT = re.compile(r"SPADEC_SCRIPTS/(\w+)\.py\b")
STDOUT_REDIRECT = re.compile(r"(?<![0-9&>])>\s*(?!&)(\S+)")


def last_error_line(log_text: str) -> str | None:
    """The log's last Python exception line (launcher wrappers only when nothing else
    failed), else its last line mentioning an error, else its last non-empty line."""
    lines = [RANK_PREFIX.sub("", line).strip() for line in log_text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    exceptions = [line for line in lines if EXCEPTION_LINE.match(line)]
    causes = [line for line in exceptions if not line.split(":")[0].endswith(WRAPPER_ERRORS)]
    if exceptions:
        return (causes or exceptions)[-1]
    mentions = [line for line in lines if "error" in line.lower()]
    return (mentions or lines)[-1]


def rule_and_log(command: str) -> tuple[str, str | None]:
    """(rule name, log path) of a job's command line, as the rules write it."""
    script = SCRIPT.search(command)
    redirect = STDOUT_REDIRECT.search(command)
    log = redirect.group(1) if redirect else None
    if script:
        return script.group(1), log
    return (Path(log).stem if log else "?"), log


def failure_line(command: str) -> str:
    """`ERROR in rule <rule>: <last error line of its log> (log: <path>)`."""
    rule, log = rule_and_log(command)
    if log is None:
        return f"ERROR in rule {rule}: the command failed (no log redirection in: {command})"
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return f"ERROR in rule {rule}: the command failed; its log cannot be read ({err})"
    line = last_error_line(text) or "the command failed with an empty log"
    return f"ERROR in rule {rule}: {line} (log: {log})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(failure_line(" ".join(argv)), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
