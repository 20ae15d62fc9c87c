"""
The accessibility audit of a page in Chromium: axe-core (Deque, MPL-2.0), as shipped inside
the C{axe-playwright-python} wheel (a test extra), injected into the page and run against
the WCAG 2.0/2.1 A and AA rules. Plus layout checks axe does not make (L{LAYOUT_CHECK}),
which matter most at a phone's width.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from playwright.sync_api import Page

#: The rule tags the portal must pass: WCAG 2.1 level AA (which includes level A).
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@cache
def axe_source() -> str:
    """The axe-core script shipped in the axe-playwright-python wheel."""
    return (resources.files("axe_playwright_python") / "axe.min.js").read_text("utf-8")


def violations(page: Page) -> list[dict[str, Any]]:
    """
    axe-core's WCAG 2.1 A/AA violations on the page as it is now. The letter's own HTML is
    not audited: its frame is sandboxed without scripts, so axe cannot run there.
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())  # evaluated by the browser's devtools: the CSP allows it
    result: dict[str, Any] = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags},"
        " resultTypes: ['violations']})",
        WCAG_TAGS,
    )
    return list(result["violations"])


def describe(found: list[dict[str, Any]]) -> str:
    """Violations as lines a person can read: rule, impact, help, and each element."""
    lines = []
    for violation in found:
        lines.append(
            f"  {violation['id']} ({violation.get('impact')}): {violation['help']}"
            f" [{violation.get('helpUrl', '')}]"
        )
        for node in violation["nodes"]:
            target = " ".join(str(t) for t in node.get("target", []))
            lines.append(f"    {target}: {node.get('failureSummary', '').strip()}")
            lines.append(f"      {node.get('html', '')[:200]}")
    return "\n".join(lines)


#: Layout problems axe does not see: sideways scrolling, the header's name or host name
#: broken over lines, a form label that runs into what is above it (less than 6 px apart),
#: and labels, fields and details that overlap.
LAYOUT_CHECK = """() => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1) {
    problems.push(`the page is ${root.scrollWidth}px wide in a ${root.clientWidth}px window`);
  }
  for (const part of document.querySelectorAll('header .brand strong, header .host')) {
    const style = getComputedStyle(part);
    const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.3;
    const height = part.getBoundingClientRect().height;
    if (height > line * 1.5) {
      problems.push(`the header's "${part.textContent.trim()}" wraps (${Math.round(height)}px)`);
    }
  }
  for (const label of document.querySelectorAll('main label')) {
    const l = label.getBoundingClientRect();
    if (!l.height) continue;
    const above = [...document.querySelectorAll('main dd, main input, main select,'
        + ' main textarea, main p')]
      .filter(e => e.type !== 'hidden' && !e.contains(label))
      .map(e => e.getBoundingClientRect())
      .filter(r => r.height && r.bottom <= l.top + 1 && r.left < l.right && l.left < r.right);
    const bottom = Math.max(...above.map(r => r.bottom));
    if (above.length && l.top - bottom < 6) {
      problems.push(`label "${label.textContent.trim().slice(0, 30)}" touches what is above`
        + ` it (${Math.round(l.top - bottom)}px apart)`);
    }
  }
  const boxes = [...document.querySelectorAll('main label, main input, main select,'
      + ' main textarea, main dt, main dd')]
    .filter(e => e.type !== 'hidden' && e.getClientRects().length)
    .map(e => [e, e.getBoundingClientRect()]);
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, r] = boxes[i];
      const [b, s] = boxes[j];
      if (a.contains(b) || b.contains(a) || a.control === b || b.control === a) continue;
      const x = Math.min(r.right, s.right) - Math.max(r.left, s.left);
      const y = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
      if (x > 1 && y > 1) {
        problems.push(`${a.tagName.toLowerCase()} "${a.textContent.trim().slice(0, 30)}"`
          + ` overlaps ${b.tagName.toLowerCase()} "${(b.textContent || b.name).trim()
            .slice(0, 30)}"`);
      }
    }
  }
  return problems;
}"""


def layout_problems(page: Page) -> list[str]:
    """What L{LAYOUT_CHECK} finds on the page as it is now."""
    found: list[str] = page.evaluate(LAYOUT_CHECK)
    return found
