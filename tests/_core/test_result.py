import numpy as np
from scipy.optimize import OptimizeResult

from mmopt import Result
from mmopt._core.result import STATUS_MESSAGES, Status


def test_result_is_optimize_result_with_attribute_access():
    res = Result(x=np.zeros(3), fun=1.0, status=0, history={"fun": np.arange(50.0)})
    assert isinstance(res, OptimizeResult)
    assert res.fun == res["fun"] == 1.0
    text = repr(res)
    assert "<50 values>" in text
    assert "fun" in dir(res)


def test_every_status_has_a_message():
    assert set(STATUS_MESSAGES) == set(Status)
    assert [int(s) for s in Status] == [0, 1, 2, 3, 4, 5]
