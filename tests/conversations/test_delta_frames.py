"""A reply's chat.delta frames are encoded from a shared prefix; the bytes on the wire must be
exactly those of the whole frame encoded by json.dumps, whatever the model's text holds."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from conversations.replies.protocol import DeltaFrames, delta_frame, encode

CONVERSATION, MESSAGE = uuid.uuid4(), uuid.uuid4()
DELTAS = DeltaFrames(CONVERSATION, MESSAGE)


@given(seq=st.integers(min_value=1, max_value=2**40), text=st.text())
def test_a_delta_is_the_bytes_of_the_whole_frame(seq: int, text: str) -> None:
    frame = DELTAS.frame(seq, text)
    whole = delta_frame(CONVERSATION, MESSAGE, seq, text)
    assert encode(frame) == json.dumps(whole, ensure_ascii=False)
    assert json.loads(encode(frame)) == whole == frame


def test_text_that_looks_like_json_stays_text() -> None:
    text = 'a"b\\c\n\u2028\x00😀}, "seq": 0, "type": "chat.done'
    assert json.loads(encode(DELTAS.frame(7, text))) == {
        "type": "chat.delta",
        "conversation_id": str(CONVERSATION),
        "message_id": str(MESSAGE),
        "seq": 7,
        "text": text,
    }
