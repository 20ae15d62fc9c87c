"""
The HTTP SMS gateway client, driven through C{treq.testing.StubTreq} over a recording
twisted.web resource: no sockets, time from C{task.Clock}.
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from secmail.config import ConfigError, HttpGatewaySettings
from secmail.sms.http import HttpSmsGateway, SmsPermanentError, SmsTemporaryError

NUMBER = "+358401234567"
HARD_TEXT = "ä ö å & = # + % ? / \\ \" '\nline two {to} {text}"
KANNEL = (
    "https://sms.example/cgi-bin/sendsms?username=u&password=s3cret"
    "&to={to}&text={text}&charset=UTF-8&coding=2"
)


class Received:
    """One request as the gateway saw it."""

    def __init__(self, request: Request) -> None:
        assert request.method is not None and request.uri is not None
        self.method = request.method.decode("ascii")
        self.uri = request.uri.decode("ascii")  # on the wire: ASCII or it was not encoded
        self.headers = {
            k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        self.body = request.content.read()

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.uri).query, keep_blank_values=True, errors="strict")

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("ascii"), keep_blank_values=True, errors="strict")


class Gateway(Resource):
    """Answers every request with one status and body, and records what it received."""

    isLeaf = True

    def __init__(self, code: int = 200, body: bytes = b"OK", hang: bool = False) -> None:
        super().__init__()
        self.code = code
        self.answer = body
        self.hang = hang
        self.received: list[Received] = []

    def render(self, request: Request) -> bytes | int:
        self.received.append(Received(request))
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return self.answer


class Fixture:
    """A gateway client wired to a recording resource and a clock."""

    def __init__(self, resource: Gateway, **settings: Any) -> None:
        self.resource = resource
        self.clock = Clock()
        self.stub: Any = cast(Any, StubTreq(resource))  # its functions are set at run time
        self.client = HttpSmsGateway(HttpGatewaySettings(**settings), self.stub, self.clock)

    def send(self, text: str, number: str = NUMBER) -> Deferred[str]:
        d = Deferred.fromCoroutine(self.client.send(number, text))
        self.stub.flush()
        return d

    @property
    def last(self) -> Received:
        return self.resource.received[-1]


class FailingClient:
    """An HTTP client whose every request fails with one error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Headers | None = None,
    ) -> Deferred[Any]:
        return fail(self.error)


class UrlTests(SynchronousTestCase):
    def test_get_placeholders_arrive_exactly(self) -> None:
        """{to} and {text} in the URL reach the gateway unchanged, whatever the text holds."""
        f = Fixture(Gateway(), url="https://gw.example/send?to={to}&text={text}&x=1")
        self.successResultOf(f.send(HARD_TEXT))
        self.assertEqual(f.last.method, "GET")
        self.assertEqual(f.last.query, {"to": [NUMBER], "text": [HARD_TEXT], "x": ["1"]})
        self.assertEqual(urlsplit(f.last.uri).fragment, "")

    @settings(max_examples=60, deadline=None)
    @given(st.text(st.characters(codec="utf-8"), min_size=1))
    def test_any_text_survives_the_url(self, text: str) -> None:
        """Any Unicode text in the URL arrives as sent, as its only `text` parameter."""
        f = Fixture(Gateway(), url="https://gw.example/send?to={to}&text={text}")
        self.successResultOf(f.send(text))
        self.assertEqual(f.last.query, {"to": [NUMBER], "text": [text]})

    def test_kannel_sendsms_url_works_as_is(self) -> None:
        """A Kannel sendsms URL gets its fields, and 202 `0: Accepted for delivery` is success."""
        f = Fixture(
            Gateway(202, b"0: Accepted for delivery"),
            url=KANNEL,
            success=r"^[03]: (Accepted|Queued)",
        )
        reply = self.successResultOf(f.send("PIN 482913 ä"))
        self.assertEqual(reply, "0: Accepted for delivery")
        self.assertEqual(urlsplit(f.last.uri).path, "/cgi-bin/sendsms")
        self.assertEqual(
            f.last.query,
            {
                "username": ["u"],
                "password": ["s3cret"],
                "to": [NUMBER],
                "text": ["PIN 482913 ä"],
                "charset": ["UTF-8"],
                "coding": ["2"],
            },
        )

    def test_kannel_queued_is_success(self) -> None:
        """Kannel's `3: Queued for later delivery` counts as sent."""
        f = Fixture(
            Gateway(202, b"3: Queued for later delivery"),
            url=KANNEL,
            success=r"^[03]: (Accepted|Queued)",
        )
        self.assertEqual(self.successResultOf(f.send("x")), "3: Queued for later delivery")

    def test_empty_answer_returns_status(self) -> None:
        """A 2xx with an empty body returns the status as the reference."""
        f = Fixture(Gateway(204, b""), url="https://gw.example/?to={to}&text={text}")
        self.assertEqual(self.successResultOf(f.send("x")), "HTTP 204")

    def test_timer_is_cancelled_after_success(self) -> None:
        """A finished send leaves no timeout pending on the clock."""
        f = Fixture(Gateway(), url="https://gw.example/?to={to}&text={text}")
        self.successResultOf(f.send("x"))
        self.assertEqual(f.clock.getDelayedCalls(), [])


class BodyTests(SynchronousTestCase):
    def test_form_body(self) -> None:
        """A form body is form-encoded: each placeholder becomes exactly one field value."""
        f = Fixture(
            Gateway(),
            url="https://gw.example/send",
            method="POST",
            body="user=u&to={to}&msg={text}",
        )
        self.successResultOf(f.send(HARD_TEXT))
        self.assertEqual(f.last.method, "POST")
        self.assertEqual(f.last.headers["content-type"], ["application/x-www-form-urlencoded"])
        self.assertEqual(f.last.form, {"user": ["u"], "to": [NUMBER], "msg": [HARD_TEXT]})

    def test_json_body_with_quotes_and_backslashes(self) -> None:
        """A JSON body stays valid JSON and carries the text exactly, quotes and all."""
        f = Fixture(
            Gateway(),
            url="https://gw.example/api",
            method="post",
            body='{"to": ["{to}"], "message": {"body": "{text}", "tag": "pin for {to}"}, "n": 1}',
        )
        text = 'say "hi" \\ then \\" and }{ ' + HARD_TEXT
        self.successResultOf(f.send(text))
        self.assertEqual(f.last.headers["content-type"], ["application/json"])
        self.assertEqual(
            json.loads(f.last.body),
            {"to": [NUMBER], "message": {"body": text, "tag": f"pin for {NUMBER}"}, "n": 1},
        )

    @settings(max_examples=60, deadline=None)
    @given(st.text(st.characters(codec="utf-8")))
    def test_any_text_survives_json(self, text: str) -> None:
        """Any Unicode text in a JSON body arrives as the same string."""
        f = Fixture(
            Gateway(),
            url="https://gw.example/api",
            method="POST",
            body='{"t": "{text}", "n": "{to}"}',
        )
        self.successResultOf(f.send(text))
        self.assertEqual(json.loads(f.last.body), {"t": text, "n": NUMBER})

    def test_custom_headers_are_sent(self) -> None:
        """Configured headers, such as a bearer token, go with the request."""
        f = Fixture(
            Gateway(),
            url="https://gw.example/api",
            method="POST",
            body='{"to": "{to}", "text": "{text}"}',
            headers={"Authorization": "Bearer abc.def", "X-Account": "42"},
        )
        self.successResultOf(f.send("x"))
        self.assertEqual(f.last.headers["authorization"], ["Bearer abc.def"])
        self.assertEqual(f.last.headers["x-account"], ["42"])

    def test_configured_content_type_wins(self) -> None:
        """A Content-Type in sms.http.headers replaces the one secmail would send."""
        f = Fixture(
            Gateway(),
            url="https://gw.example/api",
            method="POST",
            body='{"to": "{to}", "text": "{text}"}',
            headers={"content-type": "application/vnd.gw+json"},
        )
        self.successResultOf(f.send("x"))
        self.assertEqual(f.last.headers["content-type"], ["application/vnd.gw+json"])


class OutcomeTests(SynchronousTestCase):
    URL = "https://gw.example/send?to={to}&text={text}"

    def test_success_pattern_not_matching_is_permanent(self) -> None:
        """A 2xx whose body does not match `success` is a permanent failure."""
        f = Fixture(Gateway(200, b"ERR: no credit"), url=self.URL, success="^OK")
        failure = self.failureResultOf(f.send("x"), SmsPermanentError)
        self.assertIn("ERR: no credit", str(failure.value))

    def test_success_pattern_searches_the_body(self) -> None:
        """`success` may match anywhere in the body, not only at its start."""
        f = Fixture(
            Gateway(200, b'{"status": "queued", "id": "a1"}'), url=self.URL, success='"queued"'
        )
        self.assertEqual(self.successResultOf(f.send("x")), '{"status": "queued", "id": "a1"}')

    def test_server_error_is_temporary(self) -> None:
        """A 500 is worth retrying later."""
        f = Fixture(Gateway(500, b"oops"), url=self.URL)
        self.failureResultOf(f.send("x"), SmsTemporaryError)

    def test_rate_limit_is_temporary(self) -> None:
        """A 429 is worth retrying later."""
        f = Fixture(Gateway(429, b"slow down"), url=self.URL)
        self.failureResultOf(f.send("x"), SmsTemporaryError)

    def test_request_timeout_is_temporary(self) -> None:
        """A 408 (the gateway timed out waiting for us) is worth retrying, unlike other 4xx."""
        f = Fixture(Gateway(408, b"timeout"), url=self.URL)
        self.failureResultOf(f.send("x"), SmsTemporaryError)

    def test_client_error_is_permanent(self) -> None:
        """A 400 will not get better by retrying."""
        f = Fixture(Gateway(400, b"4: bad number\nmore"), url=self.URL)
        failure = self.failureResultOf(f.send("x"), SmsPermanentError)
        self.assertEqual(
            str(failure.value), "gateway refused the message (HTTP 400: 4: bad number)"
        )

    def test_redirect_not_followed_is_permanent(self) -> None:
        """A 3xx left as the final answer is not a success."""
        f = Fixture(Gateway(304, b""), url=self.URL)
        self.failureResultOf(f.send("x"), SmsPermanentError)

    def test_no_answer_in_time_is_temporary(self) -> None:
        """A gateway that never answers fails the send after the timeout, as temporary."""
        f = Fixture(Gateway(hang=True), url=self.URL, timeout=5)
        d = f.send("x")
        self.assertNoResult(d)
        f.clock.advance(4.9)
        self.assertNoResult(d)
        f.clock.advance(0.1)
        f.stub.flush()
        failure = self.failureResultOf(d, SmsTemporaryError)
        self.assertEqual(str(failure.value), "no answer from the gateway within 5 s")

    def test_connection_refused_is_temporary(self) -> None:
        """A refused connection is temporary."""
        client = HttpSmsGateway(
            HttpGatewaySettings(url=self.URL), FailingClient(ConnectionRefusedError()), Clock()
        )
        d = Deferred.fromCoroutine(client.send(NUMBER, "x"))
        self.failureResultOf(d, SmsTemporaryError)

    def test_dns_failure_is_temporary(self) -> None:
        """A failed name lookup is temporary."""
        client = HttpSmsGateway(
            HttpGatewaySettings(url=self.URL), FailingClient(DNSLookupError("gw.example")), Clock()
        )
        failure = self.failureResultOf(
            Deferred.fromCoroutine(client.send(NUMBER, "x")), SmsTemporaryError
        )
        self.assertIn("gw.example", str(failure.value))

    def test_lost_response_is_temporary(self) -> None:
        """A connection dropped before the answer is temporary, and says why."""
        error = ResponseNeverReceived([Failure(ConnectionRefusedError("reset"))])
        client = HttpSmsGateway(HttpGatewaySettings(url=self.URL), FailingClient(error), Clock())
        failure = self.failureResultOf(
            Deferred.fromCoroutine(client.send(NUMBER, "x")), SmsTemporaryError
        )
        self.assertIn("ConnectionRefusedError", str(failure.value))

    def test_caller_cancelling_is_not_a_timeout(self) -> None:
        """Cancelling the send itself cancels it, and is not reported as a gateway failure."""
        f = Fixture(Gateway(hang=True), url=self.URL)
        d = f.send("x")
        d.cancel()
        f.stub.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_number_must_be_international(self) -> None:
        """A number that is not +<digits> is refused without a request."""
        f = Fixture(Gateway(), url=self.URL)
        for number in ("0401234567", "+358 40 123", "+0123456789", "+35840123456a"):
            self.failureResultOf(f.send("x", number=number), SmsPermanentError)
        self.assertEqual(f.resource.received, [])


class LogTests(SynchronousTestCase):
    PIN = "482913"
    TEXT = f"Your secmail PIN is {PIN}.\nIt is valid for 10 minutes."

    def assert_clean(self, events: Any) -> None:
        self.assertTrue(events)
        for event in events:
            for shown in (formatEvent(event), repr(event)):
                self.assertNotIn(self.PIN, shown)
                self.assertNotIn("s3cret", shown)
                self.assertNotIn("401234567", shown)

    def test_pin_is_not_logged_on_success(self) -> None:
        """Neither the PIN, the URL's password nor the full number reach the log, even echoed."""
        echo = f"0: Accepted for delivery: {self.TEXT}".encode()
        f = Fixture(Gateway(202, echo), url=KANNEL)
        with capturedLogs() as events:
            reply = self.successResultOf(f.send(self.TEXT))
        self.assert_clean(events)
        self.assertNotIn(self.PIN, reply)
        self.assertIn("+358 40 *** **67", formatEvent(events[-1]))

    def test_pin_is_not_logged_on_failure(self) -> None:
        """A refusal echoing the message keeps the PIN out of the log and of the error."""
        for code, error in ((400, SmsPermanentError), (503, SmsTemporaryError)):
            echo = f"rejected text={self.PIN} (%s)".encode() % self.TEXT.encode()
            f = Fixture(Gateway(code, echo), url=KANNEL)
            with capturedLogs() as events:
                failure = self.failureResultOf(f.send(self.TEXT), error)
            self.assert_clean(events)
            self.assertNotIn(self.PIN, str(failure.value))

    def test_pin_is_not_logged_on_timeout(self) -> None:
        """A timeout's log line holds no PIN."""
        f = Fixture(Gateway(hang=True), url=KANNEL)
        with capturedLogs() as events:
            d = f.send(self.TEXT)
            f.clock.advance(30)
            self.failureResultOf(d, SmsTemporaryError)
        self.assert_clean(events)


class SettingsTests(SynchronousTestCase):
    URL = "https://gw.example/send?to={to}&text={text}"

    def assert_refused(self, key: str, **settings: Any) -> str:
        with self.assertRaises(ConfigError) as caught:
            HttpGatewaySettings(**settings)
        message = str(caught.exception)
        self.assertTrue(message.startswith(key + ":"), message)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        """A URL alone gives GET, no body, 30 s timeout."""
        s = HttpGatewaySettings(url=self.URL)
        self.assertEqual(
            (s.method, s.body, s.body_type, dict(s.headers), s.timeout),
            ("GET", None, None, {}, 30.0),
        )

    def test_body_type_inferred(self) -> None:
        """A body starting with { is JSON, any other body a form."""
        url = "https://gw.example/"
        self.assertEqual(HttpGatewaySettings(url, "POST", ' {"a": "{to}{text}"}').body_type, "json")
        self.assertEqual(HttpGatewaySettings(url, "POST", "a={to}&b={text}").body_type, "form")

    def test_url_must_be_http(self) -> None:
        """Only http(s) URLs with a host are accepted."""
        for url in (
            "ftp://gw.example/?to={to}&text={text}",
            "gw.example/{to}/{text}",
            "https:///{to}{text}",
        ):
            self.assertIn("must be http(s)", self.assert_refused("sms.http.url", url=url))

    def test_method(self) -> None:
        """Only GET and POST."""
        self.assertIn("GET", self.assert_refused("sms.http.method", url=self.URL, method="PUT"))

    def test_unknown_placeholder(self) -> None:
        """A placeholder other than {to} and {text} is named in the error."""
        message = self.assert_refused("sms.http.url", url=self.URL + "&from={sender}")
        self.assertIn("{sender}", message)
        self.assert_refused(
            "sms.http.body", url="https://gw.example/", method="POST", body="to={to}&t={text}&x={}"
        )
        self.assert_refused(
            "sms.http.body",
            url="https://gw.example/",
            method="POST",
            body='{"to": "{to}", "t": "{txt}"}',
        )

    def test_placeholders_required(self) -> None:
        """A gateway template without {to} or {text} is refused."""
        self.assertIn("{text}", self.assert_refused("sms.http", url="https://gw.example/?to={to}"))
        self.assertIn("{to}", self.assert_refused("sms.http", url="https://gw.example/?t={text}"))

    def test_body_with_get(self) -> None:
        """A body needs POST."""
        self.assert_refused("sms.http.body", url=self.URL, body="a=b")

    def test_json_body_must_parse(self) -> None:
        """A JSON body with an unquoted placeholder is refused with a hint."""
        message = self.assert_refused(
            "sms.http.body",
            url="https://gw.example/",
            method="POST",
            body='{"to": {to}, "t": "{text}"}',
        )
        self.assertIn('"{text}"', message)

    def test_json_placeholder_in_key(self) -> None:
        """Placeholders in JSON keys are refused."""
        self.assert_refused(
            "sms.http.body", url="https://gw.example/", method="POST", body='{"{to}": "{text}"}'
        )

    def test_body_type(self) -> None:
        """body_type is form or json, and only with a body."""
        self.assert_refused(
            "sms.http.body_type",
            url="https://gw.example/",
            method="POST",
            body="a={to}{text}",
            body_type="xml",
        )
        self.assert_refused("sms.http.body_type", url=self.URL, body_type="json")
        self.assert_refused("sms.http.body", url=self.URL, method="POST", body=1)

    def test_success_must_compile(self) -> None:
        """A broken regular expression is refused."""
        message = self.assert_refused("sms.http.success", url=self.URL, success="(0|3: ")
        self.assertIn("not a valid regular expression", message)

    def test_headers(self) -> None:
        """Header names must be tokens and values single lines without placeholders."""
        self.assert_refused("sms.http.headers", url=self.URL, headers={"Bad Name": "x"})
        self.assert_refused("sms.http.headers.X-A", url=self.URL, headers={"X-A": "a\r\nX-B: b"})
        self.assert_refused("sms.http.headers.X-A", url=self.URL, headers={"X-A": "{to}"})
        self.assert_refused("sms.http.headers", url=self.URL, headers=["X-A"])

    def test_timeout(self) -> None:
        """The timeout is a positive number of seconds."""
        for timeout in (0, -1, float("nan"), float("inf"), "30", True):
            self.assert_refused("sms.http.timeout", url=self.URL, timeout=timeout)


def test_settings_repr_hides_url_and_headers() -> None:
    """The settings' repr (as in a traceback or a debug log) shows no credentials."""
    from secmail.config import SmsSettings

    settings = HttpGatewaySettings(
        url="https://user:pw-in-url@gw.example/send?to={to}&text={text}&password=pw-in-query",
        headers={"Authorization": "Bearer token-in-header"},
    )
    shown = repr(settings) + repr(SmsSettings(order=("http",), http=settings))
    for secret in ("pw-in-url", "pw-in-query", "token-in-header"):
        assert secret not in shown
