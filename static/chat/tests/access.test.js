// Access and quotas on the page: a conversation whose persona the user may no longer use,
// and tokens used up for the period. `node --test static/chat/tests/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as chat from "../state.js";

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const REPLY = "99999999-0000-4000-8000-000000000009";
// Tue 1 Dec 2026, 18:48 UTC: 5 h 12 min before midnight.
const NOW = Date.UTC(2026, 11, 1, 18, 48, 0);
const TO_MIDNIGHT = 5 * 3600 + 12 * 60;

function openA(persona = "legal") {
  const state = chat.createState();
  chat.personasLoaded(state, [{ slug: "assistant" }, { slug: "legal" }]);
  chat.openConversation(state, A);
  chat.conversationLoaded(state, A, {
    id: A,
    title: "Contract",
    persona,
    messages: [
      { id: "u0", role: "user", content: "Is this clause fine?", status: "complete" },
      { id: REPLY, role: "assistant", content: "Mostly.", status: "complete" },
    ],
  });
  return state;
}

function send(state, content = "And the next one?", now = NOW) {
  return chat.compose(state, { content, clientId: "c1", persona: null, maxChars: 100, now });
}

test("the quota message names the period, the renewal time in UTC and the wait", () => {
  assert.equal(
    chat.quotaMessage("day", TO_MIDNIGHT, NOW),
    "You have used your tokens for today; they renew at 00:00 UTC (in 5 h 12 min)",
  );
  // Tuesday: the week renews on Monday 7 Dec.
  const toMonday = (Date.UTC(2026, 11, 7) - NOW) / 1000;
  assert.equal(
    chat.quotaMessage("week", toMonday, NOW),
    "You have used your tokens for this week; they renew on Mon 7 Dec, 00:00 UTC (in 5 d 5 h)",
  );
  assert.match(chat.quotaMessage("month", 3600, Date.UTC(2026, 11, 31, 23, 0)), /this month; they renew on Fri 1 Jan, 00:00 UTC \(in 1 h 0 min\)$/);
  assert.equal(chat.durationText(20), "1 min");
});

test("forbidden in a conversation: the message goes back, the notice says why, sending stops", () => {
  const state = openA();
  const { frame } = send(state);
  assert.ok(frame);
  const message = "You can no longer chat with Legal: this conversation stays readable. Start a new chat to go on.";
  const effects = chat.receive(state, {
    type: "chat.error",
    code: "forbidden",
    message,
    conversation_id: A,
    client_id: "c1",
  });
  // The refused text returns to the box; no separate error line: the notice is the reason.
  assert.deepEqual(effects, [{ type: "refused", text: "And the next one?" }]);
  assert.deepEqual(state.messages.map((m) => m.content), ["Is this clause fine?", "Mostly."]);
  assert.deepEqual(chat.blocked(state, NOW), { kind: "forbidden", message });
  assert.deepEqual(send(state), { error: message });
  assert.deepEqual(chat.regenerate(state, { key: REPLY, clientId: "c2", now: NOW }), { error: message });
  // A new chat is open to the personas the user may use.
  chat.openNew(state);
  assert.equal(chat.blocked(state, NOW), null);
  assert.ok(send(state).frame);
});

test("a conversation with a persona the user may no longer use is read-only from the start", () => {
  const state = openA("retired");
  assert.equal(chat.blocked(state, NOW).kind, "forbidden");
  assert.ok(send(state).error);
  assert.equal(chat.blocked(openA("legal"), NOW), null);
});

test("quota_exceeded: sending stops until the period renews, then opens again by itself", () => {
  const state = openA();
  send(state);
  const effects = chat.receive(
    state,
    { type: "chat.error", code: "quota_exceeded", message: "x", retry_after: TO_MIDNIGHT, conversation_id: A, client_id: "c1" },
    new Date(NOW).toISOString(),
  );
  assert.deepEqual(effects, [{ type: "refused", text: "And the next one?" }]);
  const reason = chat.blocked(state, NOW);
  assert.equal(reason.kind, "quota");
  assert.equal(reason.message, "You have used your tokens for today; they renew at 00:00 UTC (in 5 h 12 min)");
  assert.equal(reason.until, NOW + TO_MIDNIGHT * 1000);
  // The countdown moves on as time does.
  assert.match(chat.blocked(state, NOW + 3 * 3600 * 1000).message, /\(in 2 h 12 min\)$/);
  assert.deepEqual(send(state, "again", NOW + 1000), { error: reason.message });
  assert.ok(chat.regenerate(state, { key: REPLY, clientId: "c3", now: NOW }).error);
  // Midnight UTC: the budget renews and the box opens again.
  const midnight = NOW + TO_MIDNIGHT * 1000;
  assert.equal(chat.blocked(state, midnight), null);
  assert.ok(send(state, "Now?", midnight).frame);
});

test("a regenerate refused for quota shows nothing but the notice", () => {
  const state = openA();
  const { frame } = chat.regenerate(state, { key: REPLY, clientId: "r1", now: NOW });
  assert.ok(frame);
  const effects = chat.receive(state, { type: "chat.error", code: "quota_exceeded", message: "x", retry_after: 60, conversation_id: A, client_id: "r1" }, NOW);
  assert.deepEqual(effects, []);
  assert.equal(chat.blocked(state, NOW).message, "You have used your tokens for today; they renew at 18:49 UTC (in 1 min)");
});

test("the usage API tells the period and whether the tokens are used up already", () => {
  const state = openA();
  chat.usageLoaded(
    state,
    { period: "week", period_start: "2026-11-30T00:00:00+00:00", resets_at: "2026-12-07T00:00:00+00:00", used_tokens: 5000, limit_tokens: 5000, by_persona: [] },
    NOW,
  );
  assert.equal(state.period, "week");
  assert.match(chat.blocked(state, NOW).message, /^You have used your tokens for this week; they renew on Mon 7 Dec, 00:00 UTC/);

  const unlimited = openA();
  chat.usageLoaded(unlimited, { period: "day", resets_at: "2026-12-02T00:00:00+00:00", used_tokens: 10 ** 9, limit_tokens: null }, NOW);
  assert.equal(chat.blocked(unlimited, NOW), null);
});

test("a turn accepted (another tab, a raised budget) lifts the quota", () => {
  const state = openA();
  chat.receive(state, { type: "chat.error", code: "quota_exceeded", message: "x", retry_after: 600 }, NOW);
  assert.equal(chat.blocked(state, NOW).kind, "quota");
  chat.receive(state, {
    type: "chat.accepted",
    conversation_id: A,
    client_id: "elsewhere",
    user_message_id: "u9",
    message_id: "r9",
    parent_id: REPLY,
    persona: "legal",
    content: "From the other tab",
  });
  assert.equal(chat.blocked(state, NOW), null);
});
