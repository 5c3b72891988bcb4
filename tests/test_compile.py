"""--compile (torch.compile) changes how a run computes, not what: the same tiny run, eager and
compiled, logs the same scalars up to float rounding. On CPU inductor generates C++ kernels,
so this checks the compiled graphs themselves; their CUDA (and CUDA-graph) versions need a GPU."""

import numpy as np
import pytest

from conftest import SMOKE, scalars_of_runs, without_sps


RUNS = {
    # n-step soft backup: acting computes Q at every step, so both compiled functions run
    "soft_dqn": ("soft_dqn.py", [*SMOKE["soft_dqn.py"], "--tau", "0.1", "--n-step", "3"]),
    # pgql_equiv compiles the same network the same way (its losses, PG or QL, are eager): a2c_entropy's run covers it
    "a2c_entropy": ("a2c_entropy.py", SMOKE["a2c_entropy.py"]),
    # damped-q: the compiled networks take the Adam steps, the compiled J v the diagnostic CG solve
    "natural_pg_damped": ("natural_pg_damped.py", [*SMOKE["natural_pg_damped.py"], "--diagnostic-every", "10"]),
}


@pytest.mark.parametrize("name", RUNS)
def test_compiled_run_logs_what_the_eager_run_logs(tmp_path_factory, name):
    script, common = RUNS[name]
    # TORCH_LOGS=graph_code prints every graph dynamo captures: proof that --compile compiled
    stderr = {}
    logs = scalars_of_runs(
        tmp_path_factory,
        script,
        common,
        {"eager": [], "compiled": ["--compile"]},
        env={"TORCH_LOGS": "graph_code"},
        stderrs=stderr,
    )
    assert "TRACED GRAPH" not in stderr["eager"]
    assert stderr["compiled"].count("TRACED GRAPH") >= 2, stderr["compiled"][-2000:]
    eager, compiled = without_sps(logs["eager"]), without_sps(logs["compiled"])
    assert eager.keys() == compiled.keys()
    for tag in eager:
        assert [s for s, _ in compiled[tag]] == [s for s, _ in eager[tag]], tag
        np.testing.assert_allclose(
            [v for _, v in compiled[tag]], [v for _, v in eager[tag]], rtol=1e-3, atol=1e-5, err_msg=tag
        )
