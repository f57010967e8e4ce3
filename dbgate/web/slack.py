"""``POST /slack/interactivity``: where Slack sends Approve/Reject clicks.

Answers 404 when Slack buttons are not configured (no signing secret), so the
endpoint does not exist for an attacker to probe. The work is in
:class:`dbgate.approvals.notify.SlackActions`; this handler only reads the body
within the size limit and turns the answer into JSON.
"""

from __future__ import annotations

from aiohttp import web

from dbgate.approvals.errors import NotFound, PayloadTooLarge
from dbgate.web.keys import MAX_BODY, SLACK


async def interactivity(request: web.Request) -> web.StreamResponse:
    actions = request.app[SLACK]
    if actions is None:
        raise NotFound("Slack buttons are not configured (notifications.slack.signing_secret)")
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes") from None
    answer = await actions.handle(body, request.headers)
    return web.json_response(answer.body, status=answer.status)


SLACK_ROUTES = (("POST", "/slack/interactivity", interactivity),)
