import json
import subprocess
import sys

import pytest

pytest.importorskip("aiohttp", reason="mtrl_gym.remote needs the remote extra (aiohttp)")

from mtrl_gym.remote.protocol import (  # noqa: E402
    ProtocolError,
    decode,
    encode,
    failure_step,
    has_lone_surrogates,
    parse_request,
    read_step_reply,
    step_reply,
)
from mtrl_gym.types import Status  # noqa: E402
from tests.mtrl_gym.toy import CRASH, ToyEnv  # noqa: E402


def test_protocol__parse_request_accepts_valid_ops():
    r = parse_request({"id": 3, "op": "reset", "seed": 7, "options": {"task_id": "t0"}})
    assert (r.id, r.op, r.seed, r.options) == (3, "reset", 7, {"task_id": "t0"})
    assert parse_request({"action": "hi"}, default_op="step").action == "hi"
    call = parse_request({"op": "call", "name": "add", "arguments": {"a": 1}})
    assert (call.name, call.arguments) == ("add", {"a": 1})


@pytest.mark.parametrize(
    ("frame", "code", "match"),
    [
        ([], 400, "JSON object"),
        ({"op": "dance"}, 400, "'op' must be one of"),
        ({"op": "reset", "id": -1}, 400, "'id'"),
        ({"op": "reset", "id": True}, 400, "'id'"),
        ({"op": "reset", "seed": 1.5}, 422, "'seed'"),
        ({"op": "reset", "seed": 2**128}, 422, "'seed'"),
        ({"op": "reset", "options": "x"}, 422, "'options'"),
        ({"op": "step"}, 400, "'action'"),
        ({"op": "call", "name": ""}, 422, "'name'"),
        ({"op": "call", "name": "a", "arguments": [1]}, 422, "'arguments'"),
    ],
)
def test_protocol__parse_request_rejects_bad_frames(frame, code, match):
    with pytest.raises(ProtocolError, match=match) as info:
        parse_request(frame)
    assert info.value.code == code


def test_protocol__decode_rejects_bad_json_and_encode_rejects_objects():
    with pytest.raises(ProtocolError) as info:
        decode(b"{nope")
    assert info.value.code == 400
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        encode({"x": object()})
    import numpy as np

    assert json.loads(encode({"a": np.float32(1.5), "b": np.arange(3)})) == {
        "a": 1.5,
        "b": [0, 1, 2],
    }


def test_protocol__step_reply_round_trip_keeps_all_five_parts():
    result = ("obs", 0.25, False, True, {"status": "truncated", "x": [1]})
    assert read_step_reply(decode(encode(step_reply(4, 2, result)))) == result
    with pytest.raises(ProtocolError):
        read_step_reply(
            {"reward": "1", "terminated": 0, "truncated": False, "info": {}, "observation": ""}
        )


def test_protocol__failure_step_has_the_shape_of_a_local_infra_error():
    env = ToyEnv(extra_tools=(CRASH,))
    env.reset(options={"task_id": "t0"})
    local = env.step('<tool_call>{"name": "crash", "arguments": {}}</tool_call>')
    env.close()
    remote = failure_step(
        Status.INFRA_ERROR, "RemoteConnectionError: gone", turn=1, counts=local[4]["counts"]
    )
    assert local[1:4] == remote[1:4] == (0.0, False, True)
    assert local[4]["status"] == remote[4]["status"] == "infra_error"
    assert set(local[4]) <= set(remote[4])  # every key a consumer reads is there
    # The shape TextEnv gives an infrastructure failure found while grading (see core.TextEnv).
    assert remote[4]["eval"] == {
        "success": False,
        "status": "infra_error",
        "error": "RemoteConnectionError: gone",
    }
    assert local[4]["eval"]["success"] is False and local[4]["eval"]["status"] == "infra_error"


def test_protocol__core_import_does_not_import_remote_or_aiohttp():
    code = (
        "import mtrl_gym, mtrl_envs, sys; print('mtrl_gym.remote' in sys.modules, "
        "'aiohttp' in sys.modules, 'jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
    code = "import mtrl_gym.remote, sys; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_encode__lone_surrogates_anywhere_give_ascii_json():
    value = {"\ud800key": ["\udc00", {"x": "a\udfffb"}], "fine": "é ✓", "n": 1.5}
    text = encode(value)
    assert text.isascii() and "\\ud800key" in text
    assert text.encode("utf-8") and decode(text) == value  # the round trip keeps them


def test_has_lone_surrogates__finds_them_in_keys_values_and_nesting():
    assert has_lone_surrogates("a\ud800") and has_lone_surrogates({"\udc00": 1})
    assert has_lone_surrogates([1, {"x": ["ok", "\udfff"]}])
    assert not has_lone_surrogates({"é": ["✓", 1, None, "\U0001f600"]})  # a full pair is fine
