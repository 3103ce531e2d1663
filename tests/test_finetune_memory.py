"""benchmarks/finetune_memory.py: the per-GPU bytes of fine-tuning's model states add up."""
import json
import math

import pytest

from benchmarks import finetune_memory
from models import build_var


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory") / "rows.json"
    rows = finetune_memory.main(["--gpus", "1", "3", "8", "--json", str(out)])
    return {(r.job, r.gpus): r for r in rows}, json.loads(out.read_text())


def test_one_gpu_is_16_bytes_per_parameter(result):
    rows, _ = result
    for job, depth in (("drafter d30", 30), ("refiner d16", 16)):
        params = sum(p.numel() for p in build_var(depth, device="meta").parameters())
        r = rows[(job, 1)]
        assert r.params == params and r.weights == r.grads == 4 * params and r.adam == 8 * params
        assert r.trained == 16 * params


def test_shards_cover_the_model_and_pad_at_most_a_row_per_tensor(result):
    rows, _ = result
    model = build_var(30, device="meta")
    pad = sum(p.numel() // (p.shape[0] if p.dim() else 1) for p in model.parameters())
    for n in (3, 8):
        r = rows[("drafter d30", n)]
        assert 4 * r.params <= n * r.weights <= 4 * (r.params + n * pad)
        assert r.adam == 2 * r.weights and math.isclose(r.weights, rows[("drafter d30", 1)].weights / n, rel_tol=1e-2)


def test_totals_and_the_teacher(result):
    rows, dumped = result
    teacher = rows[("drafter d30", 1)]
    for n in (1, 3, 8):
        r = rows[("refiner d16", n)]
        assert r.teacher_replicated == teacher.weights + teacher.buffers  # a full fp32 d30 on every GPU
        assert r.teacher_sharded == rows[("drafter d30", n)].weights + teacher.buffers
        assert r.total(False) == r.trained + r.buffers + r.vae + r.teacher_replicated
        assert rows[("drafter d30", n)].teacher_replicated == 0
    by_key = {(d["job"], d["gpus"]): d for d in dumped}
    assert by_key[("refiner d16", 8)]["total_teacher_sharded"] == rows[("refiner d16", 8)].total(True)
