"""`evaluate(config)`: one model on one bench, every requested level and shot count.

Why one entry point: `optiml eval`, `optiml demo` and checkpoint selection all need the same
numbers, so they call this and read the returned dict (also written to the run directory).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tqdm import tqdm

from optiml_plugin import __version__
from optiml_plugin.benchfiles import Bench, TaskFile
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError
from optiml_plugin.eval import metrics as M
from optiml_plugin.eval.aggregate import aggregate
from optiml_plugin.eval.backend import Backend
from optiml_plugin.eval.config import EvalConfig
from optiml_plugin.bench.templates import is_task_level
from optiml_plugin.eval.prompts import Demo, Pool, build_prompt, demo_indices, sni_demos
from optiml_plugin.eval.report import default_run_dir, write_run
from optiml_plugin.eval.scoring import (CandidateScores, Tree, cut_at_stops, generate_all, score_separately,
                                        score_trees)


@dataclass(frozen=True)
class Instance:
    """One evaluated row with what was checked about it."""

    file: TaskFile
    index: int
    row: Dict[str, Any]
    references: Tuple[str, ...]
    candidates: Optional[Tuple[str, ...]]
    gold: Tuple[int, ...]
    rank: bool = False  # scored by rank classification (else generated)


@dataclass
class Prepared:
    inst: Instance
    prompt_ids: List[int]
    candidate_ids: List[List[int]]
    demo_ids: Tuple[str, ...]
    dropped: int
    truncated: bool
    prompt_format: str


def load_backend(config: EvalConfig) -> Backend:
    """The configured backend: a loaded one as is, else a transformers model directory."""
    if isinstance(config.model, Backend):
        return config.model
    from optiml_plugin.eval.backends.hf import HFBackend

    return HFBackend.from_dir(config.model, device=config.device, dtype=config.dtype)


def _check_row(tf: TaskFile, i: int, row: Dict[str, Any]) -> Instance:
    """Validate the fields eval reads; errors name the file, line and field."""
    def bad(field: str, reason: str, detail: str) -> BadRecordError:
        return BadRecordError(str(tf.path), i + 1, field, reason, detail)

    if not isinstance(row.get("src"), str):
        raise bad("src", "wrong_type", "'src' must be a string")
    refs = row.get("references")
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise bad("references", "bad_references", "'references' must be a non-empty list of strings")
    cands = row.get("candidates")
    if cands is None:
        return Instance(tf, i, row, tuple(refs), None, ())
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) and c.strip()
                                                               for c in cands):
        raise bad("candidates", "bad_candidates", "'candidates' must be null or >= 2 non-empty strings")
    gold = tuple(j for j, c in enumerate(cands) if c in refs)
    if not gold:
        norm = {M.normalize_answer(r) for r in refs}
        gold = tuple(j for j, c in enumerate(cands) if M.normalize_answer(c) in norm)
    if not gold:
        raise bad("references", "no_gold_candidate", f"no candidate matches a reference {refs[:3]!r}")
    if len(gold) == len(cands):
        raise bad("candidates", "all_candidates_gold", "every candidate is a reference")
    return Instance(tf, i, row, tuple(refs), tuple(cands), gold)


def select_instances(bench: Bench, config: EvalConfig, policy: BadRecordPolicy
                     ) -> List[Tuple[str, Instance]]:
    """(level, instance) for the first `max_per_task` rows of every task file of each level."""
    out = []
    for level in config.levels:
        split = f"{config.split}_{level}"
        for tf in bench.task_files(split):
            n = tf.count if config.max_per_task is None else min(tf.count, config.max_per_task)
            for i in range(n):
                policy.count_read()
                try:
                    inst = _check_row(tf, i, bench.read(tf, i))
                except BadRecordError as err:
                    policy.handle(err)
                    continue
                metric = config.task_metric(tf.task, inst.candidates is not None)
                if metric == "accuracy" and inst.candidates is None:
                    policy.handle(BadRecordError(str(tf.path), i + 1, "candidates", "no_candidates",
                                                 f"task {tf.task} is set to accuracy but the row has "
                                                 f"no candidates"))
                    continue
                out.append((level, replace(inst, rank=metric == "accuracy")))
    return out


class _Prompter:
    """Builds token ids of k-shot prompts for one backend within its context budget."""

    def __init__(self, bench: Bench, backend: Backend, config: EvalConfig, max_len: int,
                 caps: "GenerationCaps") -> None:
        self.bench, self.backend, self.config, self.max_len = bench, backend, config, max_len
        self.caps = caps
        self.train = {(t.benchmark, t.category, t.task): t for t in bench.task_files("train")}
        self.examples = {(t["benchmark"], t["category"], t["task"], kind): t[f"{kind}_examples"]
                         for t in bench.manifest["tasks"] for kind in ("positive", "negative")
                         if t.get(f"{kind}_examples")}
        self.counts: Counter = Counter()

    def demos(self, inst: Instance, shots: int, task_level: bool) -> List[Demo]:
        """SNI's Positive Examples for task-level tasks that have them, else the training pool."""
        key = (inst.file.benchmark, inst.file.category, inst.file.task)
        if task_level and key + ("positive",) in self.examples:
            return sni_demos(self.examples[key + ("positive",)], shots)
        train = self.train.get(key)
        if train is None or train.count == 0:
            self.counts["no_demo_pool"] += 1
            return []
        pool = Pool(size=train.count, get=lambda i: self.bench.read(train, i))
        idx = demo_indices(pool, shots, self.config.seed, f"{inst.file.benchmark}/{inst.file.task}",
                           str(inst.row.get("id", inst.index)))
        return [Demo.from_row(pool.get(j)) for j in idx]

    def prepare(self, inst: Instance, shots: int) -> Prepared:
        be, cfg, row = self.backend, self.config, inst.row
        prefix = list(be.prefix_ids)
        cand_ids = [be.encode_target(row["src"], c) + [be.eos_id] for c in inst.candidates or () if inst.rank]
        reserve = max(len(c) for c in cand_ids) if cand_ids else self.caps.plan(inst.file).max_new_tokens
        budget = self.max_len - reserve - len(prefix)
        if budget < 1:
            raise ConfigError(f"max_length {self.max_len} leaves no room for a prompt when "
                              f"{reserve} tokens are reserved for the answer "
                              f"({inst.file.path}:{inst.index + 1}); lower --max-new-tokens")
        task_level = is_task_level(inst.file.benchmark, cfg.task_level_benchmarks)
        demos = self.demos(inst, shots, task_level) if shots else []
        if len(demos) < shots:
            self.counts["short_demo_pool"] += 1
        # SNI's negative examples go with k >= 1 shots (a 0-shot prompt shows no example)
        key = (inst.file.benchmark, inst.file.category, inst.file.task, "negative")
        negatives = sni_demos(self.examples.get(key, []), cfg.sni_negative_examples, "negative") if shots else []
        cache: Dict[str, List[int]] = {}

        def encode(text: str) -> List[int]:
            if text not in cache:
                cache[text] = be.encode(text.rstrip(" "))
            return cache[text]

        prompt = build_prompt(row, demos, task_level, cfg.prompt_format, cfg.separator,
                              lambda t: len(encode(t)) <= budget, negatives, cfg.sni_explanations)
        ids = encode(prompt.text)
        truncated = len(ids) > budget
        if truncated:  # left truncation, as the paper trained with
            ids = ids[-budget:]
            self.counts["prompts_truncated"] += 1
        self.counts["demos_dropped"] += prompt.dropped
        self.counts[f"prompts_{prompt.format}"] += 1
        return Prepared(inst, prefix + ids, cand_ids, prompt.demo_ids, prompt.dropped, truncated,
                        prompt.format)


def _record(level: str, shots: int, p: Prepared, split: str) -> Dict[str, Any]:
    tf, row = p.inst.file, p.inst.row
    return {"id": row.get("id"), "benchmark": tf.benchmark, "category": tf.category, "task": tf.task,
            "level": level, "split": split, "shots": shots, "prompt_format": p.prompt_format,
            "demo_ids": list(p.demo_ids),
            "demos_dropped": p.dropped, "prompt_tokens": len(p.prompt_ids), "truncated": p.truncated,
            "references": list(p.inst.references)}


def _rank_record(rec: Dict[str, Any], inst: Instance, s: CandidateScores) -> Dict[str, Any]:
    cands = list(inst.candidates or ())
    m = M.rank_metrics(s.sums, s.last, cands, inst.gold)
    pick = max(range(len(s.sums)), key=lambda j: s.sums[j])
    rec.update(kind="rank", candidates=cands, loglik_sum=list(s.sums),
               loglik_no_eos=[a - b for a, b in zip(s.sums, s.last)], prediction=cands[pick],
               score=m["accuracy"], metrics=m)
    return rec


def evaluate(config: EvalConfig) -> Dict[str, Any]:
    """Evaluate, write the run directory, and return results (see docs/evaluation.md)."""
    config.validate()
    started = time.time()
    backend = load_backend(config)
    bench = Bench(config.bench)
    policy = BadRecordPolicy(config.on_bad_record)
    chosen = select_instances(bench, config, policy)
    if not chosen:
        raise ConfigError(f"{config.bench}: no instances in the {config.split} splits of levels "
                          f"{list(config.levels)}")
    max_len = min(config.max_length or backend.max_positions, backend.max_positions)
    caps = GenerationCaps(bench, backend, config)
    prompter = _Prompter(bench, backend, config, max_len, caps)
    records: List[Dict[str, Any]] = []
    xlingual = XlingualLoader(config)
    plan = {id(inst): config.task_shots(inst.file.task, inst.file.category) for _, inst in chosen}
    bar = tqdm(total=sum(len(v) for v in plan.values()), desc="eval", unit="inst",
               disable=not config.progress)
    skipped_shots: Counter = Counter()
    for shots in sorted(set(config.shots).union(*plan.values())):
        prepared = []
        for lv, inst in chosen:
            if shots in plan[id(inst)]:
                prepared.append((lv, prompter.prepare(inst, shots)))
            else:
                skipped_shots[f"{inst.file.benchmark}/{inst.file.task}"] += 1
        ranked = [(lv, p) for lv, p in prepared if p.inst.rank]
        generated = [(lv, p) for lv, p in prepared if not p.inst.rank]
        trees = [Tree(tuple(p.prompt_ids), tuple(tuple(c) for c in p.candidate_ids)) for _, p in ranked]
        scorer = score_trees if config.scoring == "packed" else score_separately
        scores = scorer(backend, trees, max_batch_tokens=config.max_batch_tokens,
                        max_batch_size=config.batch_size,
                        on_batch=(lambda n: None) if config.scoring == "separate" else bar.update)
        if config.scoring == "separate":
            bar.update(len(trees))
        for (lv, p), s in zip(ranked, scores):
            records.append(_rank_record(_record(lv, shots, p, config.split), p.inst, s))
        outs: List[List[int]] = [[] for _ in generated]
        groups: Dict[Tuple[int, Tuple[str, ...]], List[int]] = {}
        for j, (_, p) in enumerate(generated):
            plan_j = caps.plan(p.inst.file)
            groups.setdefault((plan_j.max_new_tokens, plan_j.stops), []).append(j)
        for (cap, stops), idx in sorted(groups.items()):
            got = generate_all(backend, [generated[j][1].prompt_ids for j in idx], cap, config.batch_size,
                               on_batch=bar.update, stop_strings=stops)
            for j, ids in zip(idx, got):
                outs[j] = ids
        for (lv, p), ids in zip(generated, outs):
            plan_p = caps.plan(p.inst.file)
            raw = backend.decode(ids)
            text = cut_at_stops(raw, plan_p.stops)
            lang = output_language(p.inst.row)
            track, rule = M.task_track(p.inst.file.task, lang)
            xl = xlingual() if track == M.XLINGUAL_TRACK else None
            m = {"rougeL": M.rouge_l(text, p.inst.references, track, xl),
                 "exact_match": M.exact_match(text, p.inst.references)}
            rec = _record(lv, shots, p, config.split)
            rec.update(kind="generate", prediction=text, new_tokens=len(ids), output_language=lang,
                       track=track, track_rule=rule, score=m["rougeL"], metrics=m,
                       max_new_tokens=plan_p.max_new_tokens, stopped=plan_p.why_stopped(raw, len(ids)))
            records.append(rec)
    bar.close()
    extra, bleu_tokenize = _bleu(records)
    counts = dict(prompter.counts)
    counts.update(instances=len(chosen), evaluations=len(records), not_run_at_shots=dict(skipped_shots),
                  rank=sum(r["kind"] == "rank" for r in records),
                  generate=sum(r["kind"] == "generate" for r in records),
                  per_level=dict(Counter(lv for lv, _ in chosen)), bad_records=policy.to_dict())
    results: Dict[str, Any] = {
        "model_id": backend.model_id, "optiml_version": __version__, "config": config.to_dict(),
        "max_length": max_len, "counts": counts,
        # the bench's own rendering of `src` (build config `prompt_format`), beside this eval's (config)
        "bench_prompt_format": bench.manifest.get("prompt_format", "paper"),
        "scoring": {"rouge_tracks": dict(Counter(r["track"] for r in records if r.get("track"))),
                    "task_tracks": {f"{r['benchmark']}/{r['task']}": {"track": r["track"], "rule": r["track_rule"]}
                                    for r in records if r.get("track")},
                    "xlingual_bpe": xlingual.origin, "bleu_tokenize": bleu_tokenize,
                    "rank_metrics": dict(M.RANK_METRICS)},
        "generation": caps.summary(records),
        "aggregate": aggregate(records, config.task_groups, extra),
        "elapsed_s": round(time.time() - started, 3)}
    out_dir = Path(config.out_dir) if config.out_dir else default_run_dir(
        backend.model_id if isinstance(config.model, Backend) else config.model, config.split)
    results["out_dir"] = str(out_dir)
    write_run(results, records, out_dir, with_charts=config.charts)
    bench.close()
    return results


@dataclass(frozen=True)
class GenPlan:
    """How one task's answers are generated: at most `max_new_tokens`, ending at `stops`."""

    max_new_tokens: int
    stops: Tuple[str, ...]
    longest_reference: Optional[int]   # tokens; None: no reference outside the evaluated split
    references_from: str

    def why_stopped(self, raw: str, new_tokens: int) -> str:
        """'stop' (a stop string), 'eos' (the model ended it) or 'cap' (ran to `max_new_tokens`)."""
        if cut_at_stops(raw, self.stops) != raw.strip():
            return "stop"
        return "cap" if new_tokens >= self.max_new_tokens else "eos"


CAP_SAMPLE = 1000   # reference rows read per task to size its cap


class GenerationCaps:
    """Per task: a token cap of `cap_multiple` x its longest reference (never above `max_new_tokens`,
    the paper's 256), and the stops: the configured ones plus the prompt format's example separator,
    unless a reference holds it.

    Why: an untrained or weak model rarely emits `</s>`; with one global cap of 256 nearly every
    generation runs to it (664 of 665 measured) and evaluation takes minutes. The references come from
    the task's rows OUTSIDE the evaluated split (its training rows, else its rows in the other
    evaluation split), so the cap never reads the gold answers it is scored against."""

    def __init__(self, bench: Bench, backend: Backend, config: EvalConfig) -> None:
        self.bench, self.backend, self.config = bench, backend, config
        self.plans: Dict[Tuple[str, str, str], GenPlan] = {}
        self._files: Dict[str, Dict[Tuple[str, str, str], TaskFile]] = {}

    def _pool(self, tf: TaskFile) -> Tuple[Optional[TaskFile], str]:
        """The task's training file, else its file in the other evaluation split (valid <-> test)."""
        kind, _, level = tf.split.partition("_")
        for split in ("train", ("valid" if kind == "test" else "test") + "_" + level):
            if split not in self._files:
                self._files[split] = {(f.benchmark, f.category, f.task): f for f in self.bench.task_files(split)}
            found = self._files[split].get((tf.benchmark, tf.category, tf.task))
            if found is not None and found.count:
                return found, split
        return None, "none"

    def plan(self, tf: TaskFile) -> GenPlan:
        key = (tf.benchmark, tf.category, tf.task)
        if key not in self.plans:
            cfg = self.config
            pool, where = self._pool(tf) if cfg.cap_multiple else (None, "off")
            refs: List[str] = []
            srcs: List[str] = []
            for i in range(min(pool.count, CAP_SAMPLE) if pool else 0):
                row = self.bench.read(pool, i)
                got = [row["tgt"]] if isinstance(row.get("tgt"), str) else list(row.get("references") or [])
                refs += got
                srcs += [row.get("src", "")] * len(got)
            longest = max((len(self.backend.encode_target(s, r)) for s, r in zip(srcs, refs)), default=None)
            cap = cfg.max_new_tokens if longest is None else min(cfg.max_new_tokens,
                                                                 max(1, int(cfg.cap_multiple * longest) + 1))
            stops = tuple(cfg.stop_strings)
            if cfg.stop_at_separator and cfg.separator and not any(cfg.separator in r for r in refs):
                stops += (cfg.separator,)
            self.plans[key] = GenPlan(cap, stops, longest, where)
        return self.plans[key]

    def summary(self, records: List[Dict[str, Any]]) -> Dict[str, Any]:
        """What results.json records: the rule, each task's cap and stops, and how generations ended."""
        return {"cap_multiple": self.config.cap_multiple, "max_new_tokens": self.config.max_new_tokens,
                "tasks": {f"{b}/{t}": {"max_new_tokens": p.max_new_tokens, "stops": list(p.stops),
                                       "longest_reference": p.longest_reference, "references_from": p.references_from}
                          for (b, _, t), p in sorted(self.plans.items())},
                "stopped": dict(Counter(r["stopped"] for r in records if r["kind"] == "generate"))}


def _bleu(records: List[Dict[str, Any]]
          ) -> Tuple[Dict[Tuple[int, str, str, str], Dict[str, float]], Dict[str, str]]:
    """Corpus BLEU per (shots, level, benchmark, task) of generated translation tasks, tokenized
    for the task's output language; and the sacrebleu tokenizer used per `benchmark/task`."""
    groups: Dict[Tuple[int, str, str, str], List[Dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "generate" and M.is_translation(r["category"]):
            groups.setdefault((r["shots"], r["level"], r["benchmark"], r["task"]), []).append(r)
    scores, used = {}, {}
    for key, rs in groups.items():
        tok = M.bleu_tokenize(rs[0]["output_language"])
        used[f"{key[2]}/{key[3]}"] = tok
        scores[key] = {"bleu": M.corpus_bleu([r["prediction"] for r in rs],
                                             [r["references"] for r in rs], tokenize=tok)}
    return scores, used


def output_language(row: Dict[str, Any]) -> str:
    """The language a row's answer is written in (SNI's `Output_language`; else the row's language)."""
    return row.get("output_language") or row.get("language") or "en"


GPT2_VOCAB = 50257


class XlingualLoader:
    """The xlingual track's BPE tokenizer, loaded on first use (English-only runs never need it).

    From `config.xlingual_bpe`, else from the model directory: OPT's own BPE files have GPT-2's
    tokens and merges, which is what the official scorer splits with.
    """

    def __init__(self, config: EvalConfig) -> None:
        model_dir = None if isinstance(config.model, Backend) else config.model
        self.source = config.xlingual_bpe or model_dir
        self.origin: Optional[str] = None
        self._tok: Optional[M.XlingualTokenizer] = None

    def __call__(self) -> M.XlingualTokenizer:
        if self._tok is None:
            if self.source is None:
                raise ConfigError("non-English outputs are scored on SNI's xlingual track, which "
                                  "splits text with GPT-2 byte-level BPE: set xlingual_bpe "
                                  "(--xlingual-bpe DIR with OPT's vocab/merges files)")
            try:
                tok = OptTokenizer.from_dir(self.source)
            except ConfigError as err:
                raise ConfigError(f"xlingual Rouge-L needs GPT-2/OPT byte-level BPE files: {err}; "
                                  f"pass --xlingual-bpe DIR") from None
            if tok.vocab_size < GPT2_VOCAB:  # e.g. the demo's small BPE: not the official pieces
                raise ConfigError(f"xlingual Rouge-L needs GPT-2's byte-level BPE; {tok.origin} has "
                                  f"{tok.vocab_size} tokens: pass --xlingual-bpe DIR with OPT's files")
            self._tok, self.origin = M.XlingualTokenizer(tok.pieces), tok.origin
        return self._tok
