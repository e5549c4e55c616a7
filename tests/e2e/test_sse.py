"""The page's Server-Sent Events parser (sse.js), run in the browser on a stream cut at the
awkward places: inside a multi-byte character and between the CR and LF of one line break."""

from __future__ import annotations

from playwright.sync_api import Page

# The SSE text, then byte offsets where the stream is cut into chunks.
STREAM = (
    'id: 1-0\r\nevent: step\r\ndata: {"note": "é"}\r\n\r\n'  # CRLF, as sse-starlette sends
    ": ping - 2026-01-01 00:00:00\r\n\r\n"  # a heartbeat comment: no message
    "data: line one\ndata: line two\n\n"  # LF; two data lines join with "\n"
    "id: 2-0\revent: status\rdata:x\r\r"  # CR only; no space after the colon
)

PARSE = """async ({ text, cuts }) => {
  const { readMessages } = await import("/sse.js");
  const bytes = new TextEncoder().encode(text);
  const edges = [0, ...cuts, bytes.length];
  const body = new ReadableStream({
    start(controller) {
      for (let i = 0; i + 1 < edges.length; i += 1) {
        controller.enqueue(bytes.slice(edges[i], edges[i + 1]));
      }
      controller.close();
    },
  });
  const messages = [];
  for await (const message of readMessages(body)) messages.push(message);
  return messages;
}"""


def test_the_sse_parser_survives_any_chunking(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    raw = STREAM.encode()
    e_acute = raw.index("é".encode())
    first_crlf = raw.index(b"\r\n")
    cuts = [first_crlf + 1, e_acute + 1, raw.index(b"\r\n\r\n") + 1, raw.index(b"line two") + 3]
    expected = [
        {"id": "1-0", "event": "step", "data": '{"note": "é"}'},
        {"id": "1-0", "event": "message", "data": "line one\nline two"},
        {"id": "2-0", "event": "status", "data": "x"},
    ]
    assert page.evaluate(PARSE, {"text": STREAM, "cuts": sorted(cuts)}) == expected
    every_byte = list(range(1, len(raw)))  # the worst case: one byte per chunk
    assert page.evaluate(PARSE, {"text": STREAM, "cuts": every_byte}) == expected
    assert page.evaluate(PARSE, {"text": STREAM, "cuts": []}) == expected
