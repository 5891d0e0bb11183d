"""The console's pages and forms: a Starlette app over the admin actions.

Every page and every button goes through `AdminActions`, the core the gRPC admin API uses,
so each is authorised, audited and traced the same way whichever front end a person used.
Pages are rendered on the server; console.js only refreshes the parts marked live.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from authz.admin.actions import AdminActions, ClassedTool, Code, Operator, Refused
from authz.approvals.base import MAX_PAGE, Status
from authz.console import views
from authz.console.config import ConsoleConfig
from authz.console.forms import MAX_NOTE_CHARS, FormError, json_field, read_form, text
from authz.console.security import CSRF_FIELD, CSRF_HEADER, SecurityHeaders, csrf_ok, csrf_token
from authz.console.signin import SignIn
from authz.observe.recent import DecisionFilter, RecentRecords
from authz.protocol.bounds import MAX_IDENTITY, MAX_NAME
from authz.protocol.errors import Refusal
from authz.protocol.identity import Caller
from authz.protocol.mcp import McpCall

HERE: Final = Path(__file__).parent
COOKIE: Final = "mcp_authz_console"
# Sign-ins last a working day; the identity provider is asked again after that.
SESSION_SECONDS: Final = 8 * 3600
LIVE_VERSION: Final = "x-live-version"
PAGE_ROWS: Final = 200
STALE_FORM: Final = "this form has expired or came from another site: reload the page and try again"
ASKED: Final = DecisionFilter(outcome=Refusal.APPROVAL_REQUIRED.label)
OUTCOMES: Final = ("allowed", *(r.label for r in Refusal))
STATUS: Final = {
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 409,
    Code.ALREADY_EXISTS: 409,
    Code.UNAVAILABLE: 503,
}
Handler = Callable[[Request, Operator], Awaitable[Response]]


class Console:
    def __init__(self, config: ConsoleConfig, actions: AdminActions, recent: RecentRecords) -> None:
        self.config = config
        self.actions = actions
        self.recent = recent
        self.signin = SignIn(config)
        self.remembered = views.Remembered()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["stamp"] = views.stamp

    # Rendering

    def _html(self, request: Request, name: str, operator: Operator | None, **ctx: Any) -> str:
        return self.templates.get_template(name).render(
            operator=operator,
            can=views.Can.of(operator) if operator else None,
            csrf=csrf_token(request),
            csrf_field=CSRF_FIELD,
            **ctx,
        )

    def render(
        self, request: Request, name: str, operator: Operator | None, code: int = 200, **ctx: Any
    ) -> HTMLResponse:
        """A whole page, with the one-time message of the action before it."""
        html = self._html(
            request,
            name,
            operator,
            flash=request.session.pop("flash", None),
            path=request.url.path,
            oidc=self.signin.uses_oidc,
            **ctx,
        )
        return HTMLResponse(html, status_code=code)

    def live(self, request: Request, name: str, operator: Operator, **ctx: Any) -> Response:
        """A live fragment: 204 when it is what the page already shows, else the new HTML."""
        html = self._html(request, name, operator, **ctx)
        version = hashlib.sha256(html.encode()).hexdigest()[:16]
        if request.headers.get(LIVE_VERSION) == version:
            return Response(status_code=204, headers={LIVE_VERSION: version})
        return HTMLResponse(html, headers={LIVE_VERSION: version})

    def refused(self, request: Request, operator: Operator | None, refusal: Refused) -> Response:
        return self.render(
            request, "refused.html", operator, STATUS[refusal.code], message=refusal.message
        )

    # Guards

    def page(self, handler: Handler, *, changes: bool = False) -> Callable[[Request], Any]:
        """`handler` for a signed-in person; a change also needs this session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            operator = self.signin.operator(request)
            if operator is None:
                return self.not_signed_in(request)
            try:
                if changes:
                    request.state.form = await self._form(request)
                return await handler(request, operator)
            except Refused as e:
                return self.refused(request, operator, e)
            except FormError as e:
                return self.refused(request, operator, Refused(Code.INVALID_ARGUMENT, str(e)))

        return endpoint

    async def _form(self, request: Request) -> dict[str, str]:
        """The request's form, if it carries this session's CSRF token and comes from here."""
        form = await read_form(request)
        sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not csrf_ok(request, sent, self.config.public_url):
            raise Refused(Code.PERMISSION_DENIED, STALE_FORM)
        return form

    def not_signed_in(self, request: Request) -> Response:
        if request.headers.get(LIVE_VERSION) is not None:
            return PlainTextResponse("signed out", status_code=401)
        if self.signin.uses_oidc:
            return RedirectResponse("/signin", status_code=303)
        return self.render(request, "signin.html", None, 401, problem="")

    # Approvals

    async def approvals(self, request: Request, operator: Operator) -> Response:
        return self.render(request, "approvals.html", operator, **await self._queue(operator))

    async def approvals_live(self, request: Request, operator: Operator) -> Response:
        return self.live(request, "approvals_live.html", operator, **await self._queue(operator))

    async def _queue(self, operator: Operator) -> dict[str, Any]:
        # One page, the most one listing returns: the requests expiring soonest, if more wait.
        page = await self.actions.pending(operator, MAX_PAGE)
        pending = sorted(page.approvals, key=lambda a: a.requested_at)
        self.remembered.keep(pending)
        entries = await self._catalogue(operator)
        lines = self.recent.admin(frozenset({"approve", "deny"}), PAGE_ROWS)
        labels = views.grant_labels(self.recent.decisions(ASKED, len(self.recent)))
        return {
            "pending": [
                {
                    "a": a,
                    "risk": views.risk_of(a.request.tool, entries),
                    "label": labels.get(a.id),
                }
                for a in pending
            ],
            "more": bool(page.next_token),
            "decided": views.decided(lines, self.remembered),
            "when": views.when,
        }

    async def approval(self, request: Request, operator: Operator) -> Response:
        approval = await self.actions.approval(operator, request.path_params["id"])
        self.remembered.keep([approval])
        can = views.Can.of(operator)
        arguments = views.shown_arguments(approval, self.config.redact, full=can.decide)
        return self.render(
            request,
            "approval.html",
            operator,
            a=approval,
            pending=approval.status is Status.PENDING,
            arguments=arguments,
            risk=views.risk_of(approval.request.tool, await self._catalogue(operator)),
            own=approval.request.identity == operator.identity,
            when=views.when,
        )

    async def decide(self, request: Request, operator: Operator) -> Response:
        verdict = request.path_params["verdict"]
        if verdict not in ("approve", "deny"):
            raise Refused(Code.NOT_FOUND, f"no such action {verdict!r}: approve or deny")
        approve = verdict == "approve"
        note = text(request.state.form, "note", MAX_NOTE_CHARS, required=False)
        approval_id = request.path_params["id"]
        await self.actions.decide(operator, approval_id, approve=approve, note=note)
        verb = "Approved" if approve else "Denied"
        return self._done(request, f"{verb} {approval_id}.", "/approvals")

    # Decisions

    async def decisions(self, request: Request, operator: Operator) -> Response:
        where = DecisionFilter.of(request.query_params)

        async def work(_: Operator) -> list[Any]:
            return self.recent.decisions(where, PAGE_ROWS)

        # A read of the audit records like any other: authorised and audited as one.
        rows = await self.actions.run(operator, "list_decisions", _described(where), work)
        return self.render(
            request,
            "decisions.html",
            operator,
            where=where,
            rows=rows,
            trace_link=self.config.trace_link,
            outcomes=OUTCOMES,
        )

    # Usage

    async def usage(self, request: Request, operator: Operator) -> Response:
        shown = views.budgets(self.actions.policy, self.recent.subjects())[:PAGE_ROWS]
        keys = [(b.counter, b.scope, b.subject) for b in shown]
        states = await self.actions.usages(operator, keys)
        rows = [views.usage_row(b, s) for b, s in zip(shown, states, strict=True)]
        return self.render(request, "usage.html", operator, rows=rows)

    async def reset(self, request: Request, operator: Operator) -> Response:
        form = request.state.form
        counter = text(form, "counter", MAX_NAME)
        scope = text(form, "scope", MAX_NAME)
        subject = json_field(form, "subject", list, "[]")
        if not all(isinstance(p, str) and len(p) <= MAX_IDENTITY for p in subject):
            raise FormError("subject: must be a JSON list of strings")
        await self.actions.reset(operator, counter, scope, subject)
        who = " / ".join(subject) or "everyone"
        return self._done(request, f"Reset {counter} for {who}.", "/usage")

    # Tools

    async def tools(self, request: Request, operator: Operator) -> Response:
        entries = await self._catalogue(operator)
        rows = views.tool_rows(entries) if entries is not None else None
        return self.render(request, "tools.html", operator, rows=rows)

    async def accept(self, request: Request, operator: Operator) -> Response:
        form = request.state.form
        upstream, name = text(form, "upstream", MAX_NAME), text(form, "name", MAX_NAME)
        fingerprint = text(form, "fingerprint", MAX_NAME)
        note = text(form, "note", MAX_NOTE_CHARS, required=False)
        await self.actions.accept_tool(operator, upstream, name, fingerprint, note)
        return self._done(request, f"Accepted the new definition of {name}.", "/tools")

    async def _catalogue(self, operator: Operator) -> list[ClassedTool] | None:
        if not self.actions.keeps_catalogue:
            return None
        return await self.actions.tools(operator)

    # Policy

    async def policy(self, request: Request, operator: Operator) -> Response:
        return self.render(request, "policy.html", operator, **await self._policy(operator))

    async def try_call(self, request: Request, operator: Operator) -> Response:
        form = request.state.form
        tool = text(form, "tool", MAX_NAME)
        caller = Caller(
            identity=text(form, "identity", MAX_IDENTITY, required=False) or "anonymous",
            claims=json_field(form, "claims", dict, "{}"),
        )
        call = McpCall("tools/call", 1, tool, json_field(form, "arguments", dict, "{}"))
        explanation = await self.actions.explain(operator, call, caller)
        ctx = {**await self._policy(operator), "explanation": explanation, "tried": form}
        return self.render(request, "policy.html", operator, **ctx)

    async def _policy(self, operator: Operator) -> dict[str, Any]:
        status = await self.actions.policy_status(operator)
        return {"status": status, "explanation": None, "tried": {}, "when": views.when}

    # Sign-in

    async def signin_page(self, request: Request) -> Response:
        return self.render(request, "signin.html", None, problem="")

    async def login(self, request: Request) -> Response:
        return await self.signin.login(request)

    async def callback(self, request: Request) -> Response:
        identity, problem = await self.signin.callback(request)
        if identity is None:
            return self.render(request, "signin.html", None, 403, problem=problem)
        return RedirectResponse("/approvals", status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await read_form(request)
        if csrf_ok(request, form.get(CSRF_FIELD), self.config.public_url):
            request.session.clear()
        return RedirectResponse("/signin" if self.signin.uses_oidc else "/", status_code=303)

    def _done(self, request: Request, message: str, to: str) -> Response:
        request.session["flash"] = message
        return RedirectResponse(to, status_code=303)


def _described(where: DecisionFilter) -> str:
    fields = {"tool": where.tool, "identity": where.identity, "outcome": where.outcome,
              "rule": where.rule}  # fmt: skip
    return " ".join(f"{k}={v}" for k, v in fields.items() if v)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(config: ConsoleConfig, actions: AdminActions, recent: RecentRecords) -> Starlette:
    c = Console(config, actions, recent)
    routes = [
        Route("/", lambda r: RedirectResponse("/approvals", status_code=303)),
        Route("/healthz", _healthz),
        Route("/signin", c.signin_page),
        Route("/login", c.login),
        Route("/auth/callback", c.callback),
        Route("/logout", c.logout, methods=["POST"]),
        Route("/approvals", c.page(c.approvals)),
        Route("/approvals/live", c.page(c.approvals_live)),
        Route("/approvals/{id}", c.page(c.approval)),
        Route(
            "/approvals/{id}/{verdict:str}",
            c.page(c.decide, changes=True),
            methods=["POST"],
        ),
        Route("/decisions", c.page(c.decisions)),
        Route("/usage", c.page(c.usage)),
        Route("/usage/reset", c.page(c.reset, changes=True), methods=["POST"]),
        Route("/tools", c.page(c.tools)),
        Route("/tools/accept", c.page(c.accept, changes=True), methods=["POST"]),
        Route("/policy", c.page(c.policy)),
        Route("/policy/try", c.page(c.try_call, changes=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders, https=config.secure_cookies),
        Middleware(
            SessionMiddleware,
            secret_key=config.session_secret.decode("latin-1"),
            session_cookie=COOKIE,
            max_age=SESSION_SECONDS,
            same_site="lax",
            https_only=config.secure_cookies,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)
