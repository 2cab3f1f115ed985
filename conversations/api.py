"""The JSON API of docs/protocol.md: short function views, errors as {"error": {code, message}}."""

from __future__ import annotations

import functools
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.db.models import Exists, OuterRef, Q
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.dateparse import parse_datetime
from django.utils.http import content_disposition_header, urlencode
from django.utils.text import slugify
from django.views.decorators.csrf import csrf_exempt

from conversations import serializers, services
from conversations.db import db_call, released
from conversations.errors import NotFound
from conversations.models import Conversation, Message
from conversations.text import UNSTORABLE_MESSAGE, one_line, unstorable, visible
from conversations.tree import Tree, path_through
from conversations.views import get_conversation_for_user
from personas.models import Persona

TITLE_MAX_CHARS = 200
SEARCH_MAX_CHARS = 200
LIST_LIMIT = 200
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# A view, sync or async.
View = TypeVar("View", bound=Callable[..., Any])


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


# What a view or the reading of a body may raise that is the client's mistake.
REFUSALS = (Http404, ApiError, SuspiciousOperation, BadRequest, MultiPartParserError)


# The database could not be reached (down, restarting, the pool's wait for a connection
# over): nothing was done, and the same call may simply be made again. Errors in a statement
# itself (a constraint, a bug) stay server errors.
DATABASE_AWAY = (OperationalError, InterfaceError)


def unavailable_response() -> JsonResponse:
    return error_response(
        503, "unavailable", "The database could not be reached; try again in a moment."
    )


def refusal_response(exc: Exception) -> JsonResponse:
    """A refusal as a JSON error. Django itself would answer its own (a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields) with an HTML page and log them with a
    traceback; they are the client's mistake, so only the usual 4xx warning line is logged."""
    if isinstance(exc, Http404):
        return error_response(404, "not_found", "No such conversation.")
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, RequestDataTooBig):
        return error_response(413, "too_large", "The request body is too large.")
    if isinstance(exc, MultiPartParserError):
        if "header size" in str(exc):
            # Django reads at most 1 KB of a part's headers, and a file's name is most of them.
            return error_response(
                400,
                "invalid",
                "The form could not be read: the file's name is too long to fit in it. "
                "Rename the file to a shorter name.",
            )
        return error_response(400, "invalid", "The form data could not be read.")
    return error_response(400, "invalid", "The request could not be read.")


def csrf_failed(request: HttpRequest) -> bool:
    # Django's middleware answers a CSRF failure with an HTML page; scripts want JSON, so
    # the API runs the same check itself and only borrows the verdict.
    middleware = CsrfViewMiddleware(_unused_view)
    return middleware.process_view(request, _unused_view, (), {}) is not None


def _unused_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


def _authenticated(request: HttpRequest) -> bool:
    return bool(request.user.is_authenticated)


def _refused_before_view(
    request: HttpRequest, allowed: frozenset[str], *, authenticated: bool
) -> JsonResponse | None:
    if not authenticated:
        return error_response(401, "unauthorized", "Log in first.")
    if request.method not in allowed:
        response = error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here."
        )
        response["Allow"] = ", ".join(sorted(allowed))
        return response
    return None


def _csrf_response() -> JsonResponse:
    return error_response(403, "csrf_failed", "Missing or wrong X-CSRFToken header.")


def api_view(*methods: str) -> Callable[[View], View]:
    """Log in, method, CSRF, then the view; every refusal answers JSON. Sync or async views.
    What answers GET answers HEAD too, as HTTP asks of every resource: the view runs as for
    GET, and the server sends its headers without the body."""
    allowed = frozenset(methods) | ({"HEAD"} if "GET" in methods else set())

    def decorator(view: View) -> View:
        if inspect.iscoroutinefunction(view):

            @csrf_exempt
            @functools.wraps(view)
            async def async_wrapper(
                request: HttpRequest, *args: Any, **kwargs: Any
            ) -> HttpResponseBase:
                try:
                    # The session and the CSRF check read the database through db_call, so no
                    # connection stays checked out while the view waits (maybe for a whole
                    # reply).
                    authenticated = await db_call(_authenticated)(request)
                    refused = _refused_before_view(request, allowed, authenticated=authenticated)
                    if refused:
                        return refused
                    if request.method not in SAFE_METHODS and await db_call(csrf_failed)(request):
                        return _csrf_response()
                    response: HttpResponseBase = await view(request, *args, **kwargs)
                    return response
                except REFUSALS as exc:
                    return refusal_response(exc)
                except DATABASE_AWAY:
                    return unavailable_response()

            return cast(View, async_wrapper)

        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                authenticated = request.user.is_authenticated  # reads the session
                if refused := _refused_before_view(request, allowed, authenticated=authenticated):
                    return refused
                # The CSRF check may read a form body, so it may refuse a huge one too.
                if request.method not in SAFE_METHODS and csrf_failed(request):
                    return _csrf_response()
                response: HttpResponseBase = view(request, *args, **kwargs)
                return response
            except REFUSALS as exc:
                return refusal_response(exc)
            except DATABASE_AWAY:
                return unavailable_response()

        return cast(View, wrapper)

    return decorator


def request_user(request: HttpRequest) -> User:
    # api_view has already answered 401 to anonymous users.
    return cast(User, request.user)


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object ({} when empty), or an ApiError: 413 too big, 400 not JSON."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(413, "too_large", "The request body is too large.") from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser goes is bad JSON, not a server error.
        raise ApiError(400, "invalid", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "The body must be a JSON object.")
    if unstorable(body):
        raise ApiError(400, "invalid", UNSTORABLE_MESSAGE)
    return body


def _persona_for_new_conversation(slug: Any, user_id: int) -> Persona:
    if slug is not None and not isinstance(slug, str):
        raise ApiError(400, "invalid", "persona must be a slug or null.")
    try:
        return services.persona_for_new_conversation(slug, user_id)
    except NotFound as exc:
        raise ApiError(404, "not_found", exc.message) from None


def _clean_title(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", "title must be a string.")
    title = one_line(value)
    if not visible(title):
        raise ApiError(400, "invalid", "title must not be empty.")
    if len(title) > TITLE_MAX_CHARS:
        raise ApiError(400, "invalid", f"title must be at most {TITLE_MAX_CHARS} characters.")
    return title


@api_view("GET")
def personas(request: HttpRequest) -> HttpResponse:
    # Only what the user may use: any other persona does not exist for them.
    usable = Persona.objects.usable_by(request_user(request).pk)
    return JsonResponse([serializers.persona_dict(p) for p in usable], safe=False)


@api_view("GET")
def usage(request: HttpRequest) -> HttpResponse:
    """This period's tokens against the user's limit (null: none), and per persona."""
    user_id = request_user(request).pk
    budget = services.budget_for(user_id=user_id)
    by_persona = services.usage_by_persona(user_id=user_id, since=budget.period_start)
    return JsonResponse(
        {
            "period": budget.period,
            "period_start": budget.period_start.isoformat(),
            "resets_at": budget.resets_at.isoformat(),
            "used_tokens": budget.used_tokens,
            "limit_tokens": budget.limit_tokens,
            "by_persona": [{"persona": slug, "tokens": tokens} for slug, tokens in by_persona],
        }
    )


@api_view("GET", "POST")
def conversations(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        persona = _persona_for_new_conversation(
            json_body(request).get("persona"), request_user(request).pk
        )
        conversation = Conversation.objects.create(owner=request_user(request), persona=persona)
        return JsonResponse(serializers.conversation_dict(conversation), status=201)

    found = Conversation.objects.filter(owner=request_user(request)).select_related("persona")
    query = request.GET.get("q", "").strip()[:SEARCH_MAX_CHARS]
    if unstorable(query):  # no column holds it, so none matches: and PostgreSQL refuses it
        raise ApiError(400, "invalid", UNSTORABLE_MESSAGE)
    if query:
        # Exists() rather than a join keeps one row per conversation without DISTINCT.
        in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
        found = found.filter(Q(title__icontains=query) | Q(Exists(in_messages)))
    before = request.GET.get("before")
    if before is not None:
        updated_at, after_id = _list_cursor(before)
        found = found.filter(
            Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, id__lt=after_id)
        )
    # One more than a page says whether a next one exists; id breaks ties in updated_at.
    rows = list(found.order_by("-updated_at", "-id")[: LIST_LIMIT + 1])
    response = JsonResponse(
        [serializers.conversation_dict(c) for c in rows[:LIST_LIMIT]], safe=False
    )
    if len(rows) > LIST_LIMIT:
        last = rows[LIST_LIMIT - 1]
        params = {"q": query} if query else {}
        params["before"] = f"{last.updated_at.isoformat()}~{last.id}"
        response["Link"] = f'<{request.path}?{urlencode(params)}>; rel="next"'
    return response


def _list_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    """`before`'s cursor, as the list's own next link writes it: the last conversation's
    `updated_at` and id."""
    when, _, conversation_id = value.rpartition("~")
    try:
        parsed = parse_datetime(when)
        if parsed is not None and parsed.tzinfo is not None:
            return parsed, uuid.UUID(conversation_id)
    except ValueError:
        pass
    raise ApiError(400, "invalid", "before must be a cursor from the list's next link.")


def _message_id(value: Any, field: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise ApiError(400, "invalid", f"{field} must be a message id.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{field} is not a valid message id.") from None


def _in_tree(tree: Tree, message_id: uuid.UUID) -> uuid.UUID:
    if message_id not in tree:
        raise ApiError(404, "not_found", "No such message in this conversation.")
    return message_id


def _detail_response(found: Conversation, tree: Tree, leaf: uuid.UUID | None) -> HttpResponse:
    return HttpResponse(
        serializers.conversation_detail_json(found, tree, leaf), content_type="application/json"
    )


def _conversation_update(found: Conversation, body: dict[str, Any]) -> HttpResponse:
    """PATCH: rename and/or switch the active path, each checked before anything is saved."""
    if "title" not in body and "current_leaf_id" not in body:
        raise ApiError(400, "invalid", "title or current_leaf_id is required.")
    changes: dict[str, Any] = {}
    if "title" in body:
        changes["title"] = _clean_title(body["title"])
    tree = serializers.conversation_tree(found.id)
    if "current_leaf_id" in body:
        chosen = _in_tree(tree, _message_id(body["current_leaf_id"], "current_leaf_id"))
        # A version is chosen by any message of it; the path goes on down its newest branch.
        changes["current_leaf_id"] = path_through(tree, chosen)[-1]
    # update() leaves updated_at alone: renaming or switching versions is not activity, the
    # list order stays.
    Conversation.objects.filter(pk=found.pk).update(**changes)
    for field, value in changes.items():
        setattr(found, field, value)
    return _detail_response(found, tree, None)


@api_view("GET", "PATCH", "DELETE")
def conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    found = get_conversation_for_user(request, conversation_id)
    if request.method == "DELETE":
        services.conversation_delete(conversation_id=found.id)
        return HttpResponse(status=204)
    if request.method == "PATCH":
        return _conversation_update(found, json_body(request))
    tree = serializers.conversation_tree(found.id)
    leaf = None
    if "leaf" in request.GET:
        leaf = _in_tree(tree, _message_id(request.GET["leaf"], "leaf"))
    return _detail_response(found, tree, leaf)


FEEDBACK_COMMENT_MAX_CHARS = 2000


def _rating(body: dict[str, Any]) -> int:
    rating = body.get("rating")
    # bool is an int to Python, but `true` is no rating.
    if isinstance(rating, bool) or rating not in (1, -1, 0):
        raise ApiError(400, "invalid", "rating must be 1, -1 or 0.")
    return int(rating)


def _comment(body: dict[str, Any]) -> str:
    comment = body.get("comment", "")
    if comment is None:
        return ""
    if not isinstance(comment, str):
        raise ApiError(400, "invalid", "comment must be a string.")
    comment = comment.strip()
    if len(comment) > FEEDBACK_COMMENT_MAX_CHARS:
        raise ApiError(
            400, "invalid", f"comment must be at most {FEEDBACK_COMMENT_MAX_CHARS} characters."
        )
    return comment


def get_message_for_user(request: HttpRequest, message_id: uuid.UUID) -> Message:
    # Scoped by the conversation's owner: another user's message is a plain 404.
    found = Message.objects.filter(id=message_id, conversation__owner=request_user(request))
    message = found.first()
    if message is None:
        raise ApiError(404, "not_found", "No such message.")
    return message


@api_view("PUT")
def feedback(request: HttpRequest, message_id: uuid.UUID) -> HttpResponse:
    """Rate a reply: 1 or -1 with an optional comment; 0 takes the rating back."""
    message = get_message_for_user(request, message_id)
    body = json_body(request)
    rating, comment = _rating(body), _comment(body)
    if message.role != Message.Role.ASSISTANT:
        raise ApiError(400, "invalid", "Only replies can be rated.")
    stored, kept = services.message_rate(message_id=message.id, rating=rating, comment=comment)
    return JsonResponse({"rating": stored, "comment": kept})


@api_view("GET")
def export(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponseBase:
    found = get_conversation_for_user(request, conversation_id)
    kind = request.GET.get("format", "md")
    stem = slugify(found.title)[:60] or "conversation"
    filename = f"{stem}-{str(found.id)[:8]}"
    writer: serializers.Export
    pages: AsyncIterator[list[Message]]
    if kind == "json":
        writer, pages = serializers.JsonExport(found), _tree_pages(found.id)
        content_type, filename = "application/json", filename + ".json"
    elif kind == "md":
        writer, pages = serializers.MarkdownExport(found), _path_pages(found)
        content_type, filename = "text/markdown; charset=utf-8", filename + ".md"
    else:
        raise ApiError(400, "invalid", "format must be md or json.")
    return StreamingHttpResponse(
        _export_stream(writer, pages),
        content_type=content_type,
        headers={"Content-Disposition": content_disposition_header(True, filename)},
    )


def _messages_after(conversation_id: uuid.UUID, after: Message | None) -> list[Message]:
    found = Message.objects.filter(conversation_id=conversation_id)
    if after is not None:
        found = found.filter(
            Q(created_at__gt=after.created_at) | Q(created_at=after.created_at, id__gt=after.id)
        )
    page = found.order_by(*serializers.MESSAGE_ORDER)[: serializers.MESSAGE_CHUNK]
    return list(serializers.with_attachments(page))


def _active_path(conversation: Conversation) -> list[uuid.UUID]:
    tree = serializers.conversation_tree(conversation.id)
    return serializers.shown_path(conversation, tree).path


STREAM_PIECE = 64 * 1024  # characters per piece sent: few sends, little held

# Thread-sensitive: under ASGI that is the request's own thread, and in tests the one that
# holds the test's transaction. `released` gives the connection back after each page, so a
# client that downloads slowly holds memory for one page and no connection at all.
_read_page = sync_to_async(released(_messages_after), thread_sensitive=True)
_read_path = sync_to_async(released(_active_path), thread_sensitive=True)
_read_ids = sync_to_async(released(serializers.messages_in_order), thread_sensitive=True)


async def _tree_pages(conversation_id: uuid.UUID) -> AsyncIterator[list[Message]]:
    """Every message of the conversation, every branch, a page at a time, read by key."""
    after: Message | None = None
    while True:
        page = await _read_page(conversation_id, after)
        yield page
        if len(page) < serializers.MESSAGE_CHUNK:
            return
        after, page = page[-1], []  # let the page go before the next one is read


async def _path_pages(conversation: Conversation) -> AsyncIterator[list[Message]]:
    """The active path, a page of rows at a time, after one read of the tree's skeleton."""
    path = await _read_path(conversation)
    for start in range(0, len(path), serializers.MESSAGE_CHUNK):
        yield await _read_ids(path[start : start + serializers.MESSAGE_CHUNK])


async def _export_stream(
    writer: serializers.Export, pages: AsyncIterator[list[Message]]
) -> AsyncIterator[bytes]:
    """The export in pieces of about STREAM_PIECE bytes, reading a page of messages at a
    time (an async iterator: under ASGI a sync one would first be read whole into a list)."""
    pieces = [writer.head()]
    size = 0
    async for page in pages:
        for message in page:
            pieces.append(writer.message(message))
            size += len(pieces[-1])
            if size >= STREAM_PIECE:
                yield "".join(pieces).encode()
                pieces, size = [], 0
    pieces.append(writer.tail())
    yield "".join(pieces).encode()
