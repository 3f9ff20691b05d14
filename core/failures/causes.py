"""The catalogue of failure causes: stable ids, titles, the chain of events, the fixes.

Chain and fix lines are templates filled from the facts of one experiment (`{hf_cache}`,
`{invoking_home}`, ...). A line whose facts are unknown is left out rather than guessed.
How each cause is recognised in an exception or a log line is in core.failures.catalogue.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Tuple


@dataclass(frozen=True)
class CauseRule:
    """One catalogue entry. `chain` and `fix` are templates (str.format fields = fact names);
    `transient` says whether running the same experiment again may succeed (the runner retries
    only those); `short` is the reason in a few words, as the runner records it."""

    id: str
    title: str
    chain: Tuple[str, ...]
    fix: Tuple[str, ...]
    transient: bool = False
    short: str = ""


_HUB_NOTE = ("huggingface_hub falls back to the local cache when the Hub cannot be reached; "
             "the fallback found nothing in {hf_cache_or_run}, so the weights were missing there too.")

RULES: Tuple[CauseRule, ...] = (
    CauseRule(
        "hub.cache-miss.sudo-home",
        "Weights were in your cache, but the run (HOME={home}) looked in another one",
        (
            "The experiment was launched with {launch_how} as {user}, so HOME was {home} instead of "
            "{invoking_home} (the home of {invoking_user}, who started the batch).",
            "huggingface_hub therefore resolved its cache to {hf_cache} and looked for {need} there.",
            "The preflight record shows {need} present in {found_elsewhere}, under {invoking_home}: "
            "a cache the run never looked at.",
            "{network_sentence}",
            "It gave up with {fatal} ({where}).",
        ),
        (
            "sudo env HF_HUB_CACHE={found_cache} HF_HUB_OFFLINE=1 {python_abs} -c \"import timm; "
            "timm.create_model('{timm_name}', pretrained=True)\"   # proves the load works as root from that cache",
            "sudo --preserve-env=HF_HUB_CACHE,HF_HUB_OFFLINE env HF_HUB_CACHE={found_cache} HF_HUB_OFFLINE=1 {rerun_cmd}",
            "sudo mkdir -p {hf_cache} && sudo cp -a {found_entry} {hf_cache}/",
            "mutation-doctor -ec {rerun} --launch sudo",
        ),
        short="weights not in the cache the process used (HOME moved under sudo; retrying fails the same way)",
    ),
    CauseRule(
        "hub.cache-miss",
        "Pretrained weights missing from the Hugging Face cache the run used",
        (
            "{model_label} needs {need} from the Hugging Face Hub{loader_sentence}.",
            "{offline_sentence}",
            "The files were not in {hf_cache_or_run}; it raised {fatal} ({where}).",
            "{found_sentence}",
            "{sudo_sentence}",
        ),
        (
            "mutation-doctor prefetch -ec {rerun}",
            "HF_HUB_CACHE={hf_cache_fix} python -c \"from huggingface_hub import snapshot_download; "
            "snapshot_download('{hub_repo}')\"",
            "sudo --preserve-env=HF_HUB_CACHE,HF_HUB_OFFLINE env HF_HUB_CACHE={hf_cache_fix} HF_HUB_OFFLINE=1 {rerun_cmd}",
            "mutation-doctor -ec {rerun} --launch sudo",
        ),
        short="weights not in the cache the process used (a cache miss; retrying fails the same way)",
    ),
    CauseRule(
        "hub.tls",
        "TLS failure talking to the Hugging Face Hub",
        (
            "{model_label} asked the Hub at {endpoint_or_default} for {need}.",
            "The TLS handshake failed: {exc} ({where}). A self-signed certificate usually means a "
            "TLS-intercepting proxy or firewall whose CA is not trusted by this Python.",
            "{hub_fallback_sentence}",
            "It gave up with {fatal}.",
        ),
        (
            "export HF_HUB_OFFLINE=1   # when the weights are cached, no TLS connection is needed",
            "export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt",
            "mutation-doctor -ec {rerun} --only network,cache",
        ),
        short="TLS certificate rejected (proxy or CA configuration)",
    ),
    CauseRule(
        "hub.timeout",
        "The Hugging Face Hub did not answer in time",
        (
            "{model_label} asked the Hub at {endpoint_or_default} for {need}.",
            "The request timed out: {exc} ({where}). An address that accepts a connection but "
            "never answers (a black-holed network) costs 10 s per file, then a 60 s retry timeout "
            "with 5 backoffs: about 6 minutes per file before anything is reported.",
            "{hub_fallback_sentence}",
            "It gave up with {fatal}.",
        ),
        (
            "export HF_HUB_OFFLINE=1   # fail in 0.03 s instead of minutes, load from the cache",
            "mutation-doctor prefetch -ec {rerun}",
            "mutation-doctor -ec {rerun} --only network,cache",
        ),
        transient=True,
        short="network timeout (Hugging Face Hub)",
    ),
    CauseRule(
        "hub.connection",
        "The Hugging Face Hub could not be reached",
        (
            "{model_label} asked the Hub at {endpoint_or_default} for {need}.",
            "The connection failed: {exc} ({where}).",
            "{hub_fallback_sentence}",
            "It gave up with {fatal}.",
        ),
        (
            "mutation-doctor prefetch -ec {rerun}",
            "export HF_HUB_OFFLINE=1   # once the weights are cached",
            "mutation-doctor -ec {rerun} --only network,cache",
        ),
        transient=True,
        short="network error (Hugging Face Hub)",
    ),
    CauseRule(
        "hub.proxy",
        "The proxy refused or broke the connection to the Hub",
        (
            "The run's environment sends Hub traffic through a proxy{proxy_sentence}.",
            "The proxy failed the request: {exc} ({where}). Proxy errors are not network errors "
            "to huggingface_hub: it does not fall back to the local cache for them.",
        ),
        (
            "env | grep -i _proxy",
            "export NO_PROXY=huggingface.co,hf.co HF_HUB_OFFLINE=1",
            "mutation-doctor -ec {rerun} --only network",
        ),
        transient=True,
        short="network error (proxy)",
    ),
    CauseRule(
        "hub.not-found",
        "The Hub says the model repository or file does not exist (or is gated)",
        (
            "{model_label} asked {endpoint_or_default} for {need}.",
            "The Hub answered: {exc} ({where}). The repo id, revision or file name is wrong, the "
            "repo is private/gated and no token was sent, or HF_ENDPOINT points to a mirror "
            "that lacks it.",
        ),
        (
            "python -c \"import timm; print(timm.models.get_pretrained_cfg('{timm_name}').hf_hub_id)\"",
            "echo $HF_ENDPOINT",
            "huggingface-cli login",
        ),
        short="the Hub does not have that file or repository",
    ),
    CauseRule(
        "torchhub.download",
        "A torch hub checkpoint had to be downloaded and could not be",
        (
            "{model_label} needs {checkpoint} in {torch_hub}/checkpoints; it was not there, so "
            "torch.hub tried to download it{download_sentence}.",
            "The download failed: {exc} ({where}).",
            "{partial_sentence}",
        ),
        (
            "ls -l {torch_hub}/checkpoints/",
            "mutation-doctor prefetch -ec {rerun}",
            "sudo --preserve-env=TORCH_HOME env TORCH_HOME={torch_home_fix} {rerun_cmd}",
        ),
        transient=True,
        short="network error (torch hub download)",
    ),
    CauseRule(
        "network.connection",
        "A network connection failed",
        (
            "The run needed the network and the connection failed: {exc} ({where}).",
            "It was not the Hugging Face Hub or the torch hub; a dataset download or a remote "
            "service the training code talks to is the usual reason.",
        ),
        (
            "tail -n 50 {log_path}",
            "mutation-doctor -ec {rerun} --only network",
        ),
        transient=True,
        short="network error",
    ),
    CauseRule(
        "cuda.oom.foreign-process",
        "CUDA out of memory: another process was holding GPU memory",
        (
            "{foreign_sentence}",
            "The experiment then asked for more GPU memory than was left: {exc} ({where}).",
            "{parallel_sentence}",
        ),
        (
            "nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv",
            "{kill_cmd}",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="CUDA out of memory (memory held by another process)",
    ),
    CauseRule(
        "cuda.oom",
        "CUDA out of memory",
        (
            "The experiment asked for more GPU memory than was free: {exc} ({where}).",
            "{oom_detail_sentence}",
            "{batch_sentence}",
            "{parallel_sentence}",
        ),
        (
            "nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv",
            "mutation-doctor -ec {rerun} --only system",
            "{batch_fix}",
        ),
        short="CUDA out of memory",
    ),
    CauseRule(
        "cuda.arch",
        "The environment's torch has no kernels for this GPU",
        (
            "CUDA failed with: {exc} ({where}).",
            "The torch build in the repo's environment ({python_or_env}) was compiled without "
            "this GPU's architecture (sm_XY); an old torch (e.g. 1.8 +cu111) on a newer GPU does this.",
        ),
        (
            "{python_cmd} -c \"import torch; print(torch.__version__, torch.cuda.get_arch_list(), torch.cuda.get_device_capability())\"",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="the interpreter's torch does not support this GPU",
    ),
    CauseRule(
        "cuda.unavailable",
        "No usable CUDA GPU in the run",
        (
            "CUDA could not be initialised: {exc} ({where}).",
            "The process saw no driver or no device: the NVIDIA driver is missing or not loaded, "
            "CUDA_VISIBLE_DEVICES hid the GPUs, or the environment's torch is a CPU-only build.",
        ),
        (
            "nvidia-smi",
            "{python_cmd} -c \"import torch; print(torch.__version__, torch.cuda.is_available())\"",
            "echo \"CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES\"",
        ),
        short="no usable CUDA GPU",
    ),
    CauseRule(
        "python.module-missing",
        "A Python module is not installed in the interpreter that ran",
        (
            "The training code imports {module}, and the interpreter that ran it "
            "({python_or_env}) does not have it: {exc} ({where}).",
            "{sudo_python_sentence}",
        ),
        (
            "{python_cmd} -m pip install {module_pkg}",
            "{python_cmd} -c \"import {module}\"",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="a Python module is missing",
    ),
    CauseRule(
        "python.interpreter-missing",
        "The Python interpreter or conda environment the repo uses was not found",
        (
            "The repo's train script starts a fixed interpreter; it was not there for the user "
            "the run ran as: {exc} ({where}).",
            "{sudo_python_sentence}",
        ),
        (
            "ls -l {python_path}",
            "conda env list",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="the interpreter or environment is missing",
    ),
    CauseRule(
        "data.missing",
        "A dataset or input file was missing",
        (
            "The training code opened {missing_path_or_file}, which did not exist for the run: "
            "{exc} ({where}).",
            "Relative paths are resolved from the repo folder (the run's working directory).",
        ),
        (
            "ls -l {missing_path}",
            "mutation-doctor -ec {rerun} --only cache",
        ),
        short="a file or folder is missing",
    ),
    CauseRule(
        "config.error",
        "The experiment's settings or command line were rejected",
        (
            "The settings or the command built from them were not accepted: {exc} ({where}).",
            "Nothing was trained; rerunning unchanged will fail the same way.",
        ),
        (
            "mutation-doctor -ec {rerun} --only settings",
        ),
        short="the settings or the train script's arguments were rejected (config error)",
    ),
    CauseRule(
        "perf.unavailable",
        "perf could not read the RAPL energy counters",
        (
            "The energy measurement wraps training in `perf stat -e power/energy-pkg/`; perf "
            "refused: {exc} ({where}).",
            "Where perf itself fails, the wrapped training does not start at all (perf exits 129) "
            "or the energy columns come out empty.",
        ),
        (
            "perf stat -e power/energy-pkg/ true",
            "sudo sysctl kernel.perf_event_paranoid=0",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="perf cannot read the energy counters",
    ),
    CauseRule(
        "permission.denied",
        "Permission denied",
        (
            "The run could not open or write a file: {exc} ({where}).",
            "Files left root-owned by an earlier sudo run are the usual reason; or the run was not "
            "root when it needed to be.",
        ),
        (
            "ls -ld {denied_dir}",
            "sudo chown -R {owner}: {denied_dir}",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="permission denied",
    ),
    CauseRule(
        "disk.full",
        "The disk filled up",
        (
            "Writing failed because the file system was full: {exc} ({where}).",
            "Checkpoints, logs and caches of earlier runs are the usual reason.",
        ),
        (
            "df -h {full_dir}",
            "du -sh {full_dir}/* | sort -h | tail",
            "mutation-doctor -ec {rerun} --only system",
        ),
        short="no space left on the device",
    ),
    CauseRule(
        "killed",
        "The training process was killed (SIGKILL)",
        (
            "The process ended by {signal_text} after {duration_text}; it printed no error of its "
            "own because SIGKILL cannot be caught.",
            "The kernel's OOM killer (host RAM, not GPU memory) or a `kill -9` does this.",
            "{last_line_sentence}",
        ),
        (
            "journalctl -k --since '{since}' | grep -iE 'out of memory|killed process'",
            "free -g",
        ),
        transient=True,
        short="killed (out-of-memory killer?)",
    ),
    CauseRule(
        "interrupted",
        "The run was interrupted",
        (
            "The process stopped on {signal_text} after {duration_text}: someone pressed Ctrl-C, the "
            "terminal or SSH session closed, or the machine shut down.",
        ),
        (
            "{resume_cmd}",
            "tmux new -s batch   # start long batches inside tmux or screen",
        ),
        short="interrupted",
    ),
    CauseRule(
        "timeout",
        "The run exceeded its time limit and was stopped",
        (
            "The runner stopped the experiment after {duration_text}, at its time limit, with "
            "{signal_text}; it had not finished by then.",
            "{last_line_sentence}",
        ),
        (
            "tail -n 50 {log_path}",
            "mutation-run -ec {rerun} --timeout {bigger_timeout}",
        ),
        transient=True,
        short="timeout",
    ),
    CauseRule(
        "metrics.not-extracted",
        "Succeeded, but its metrics were not extracted from the log",
        (
            "The run was recorded as successful{exit_sentence} and did real work: {work_sentence}.",
            "No metric was recorded (performance_metrics is empty): {pattern_sentence}",
            "{lookalike_sentence}",
            "Its results are real; only the numbers are missing from the record.",
        ),
        (
            "grep -nE '{lookalike_regex}' {log_path}   # the lines that hold the metric",
            "# correct performance_metrics.log_patterns of {repo} in the registry: {pattern_fix}",
            "tail -n 50 {log_path}",
        ),
        short="metrics not extracted from the log",
    ),
    CauseRule(
        "false-success",
        "Reported as successful, but probably trained nothing",
        (
            "The run was recorded as successful{exit_sentence}.",
            "{suspicion_sentences}",
            "Treat its numbers as missing until it is checked.",
        ),
        (
            "tail -n 50 {log_path}",
            "mutation-run -ec {rerun}",
        ),
        short="probably trained nothing",
    ),
    CauseRule(
        "unknown",
        "Failed for a reason not in the catalogue",
        (
            "{unknown_sentence}",
        ),
        (
            "tail -n 80 {log_path}",
        ),
        short="an error the catalogue does not know",
    ),
)

BY_ID: Dict[str, CauseRule] = {r.id: r for r in RULES}
IDS: Tuple[str, ...] = tuple(r.id for r in RULES)


class _Missing(Exception):
    pass


class _Facts(dict):
    def __missing__(self, key):
        raise _Missing(key)


def render_lines(templates: Iterable[str], facts: Mapping[str, object]) -> Tuple[str, ...]:
    """Fill templates; lines that need an unknown (or empty) fact are dropped."""
    f = _Facts({k: v for k, v in facts.items() if v not in (None, "")})
    out: List[str] = []
    for t in templates:
        try:
            line = string.Formatter().vformat(t, (), f)
        except (_Missing, KeyError, IndexError, ValueError):
            continue
        if line.strip() and line not in out:
            out.append(line)
    return tuple(out)
