"""HTML for the dashboard pages. Pure functions from data to markup; every value goes through
`esc` (agent-supplied strings must render as inert text) and, before that, through
`stockade.core.display`, so a direction-control, invisible or look-alike character shows as a
highlighted escape (`\\u2067`) instead of rearranging what the owner reads. Attribute values
the page itself submits back (filters) use `attr`, which only HTML-escapes."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

from stockade.core.display import WARNING, Shown, escape_parts, show_json, show_text
from stockade.core.types import TIERS
from stockade.supervision.shown import who_text

NAV = (("/", "Overview"), ("/approvals", "Approvals"), ("/activity", "Live activity"), ("/agents", "Agents"),
       ("/audit", "Audit"), ("/secrets", "Secrets"), ("/packs", "Packs"))


def attr(v: Any) -> str:
    """HTML-escaped only: for values sent back as they are (form fields, ids in URLs)."""
    return html.escape("" if v is None else str(v), quote=True)


def _marked(shown: Shown) -> str:
    """HTML of shown text, each escape in a highlighted span."""
    return "".join(f'<span class="esc">{attr(p)}</span>' if is_esc else attr(p)
                   for p, is_esc in escape_parts(shown.text))


def esc(v: Any) -> str:
    """Any value as inert, visible text: HTML-escaped, invisible characters shown as escapes
    (no markup added, so it is safe inside attribute values too)."""
    return attr(show_text("" if v is None else str(v)).text)


def warning(suspicious: bool) -> str:
    return f'<p class="warn" role="alert">⚠ {attr(WARNING)}</p>' if suspicious else ""


def ts(t: Any) -> str:
    if not isinstance(t, int | float):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def pretty(v: Any) -> str:
    return _marked(show_json(v, indent=2))


def badge(status: Any) -> str:
    return f'<span class="badge b-{attr(str(status).replace(" ", "-"))}">{esc(status)}</span>'


def layout(title: str, body: str, *, csrf: str | None, active: str = "") -> str:
    nav = "".join(f'<a href="{p}"{" class=on" if p == active else ""}>{esc(n)}</a>' for p, n in NAV)
    logout = (f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
              f'value="{attr(csrf)}"><button class="link">Log out</button></form>') if csrf else ""
    meta = f'<meta name="csrf" content="{attr(csrf)}">' if csrf else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
{meta}<title>{esc(title)} · stockade</title><link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script></head>
<body><header><span class="brand">stockade</span><nav>{nav if csrf else ""}</nav>{logout}</header>
<main><h1>{esc(title)}</h1>{body}</main></body></html>"""


def login(login_csrf: str, error: str | None = None) -> str:
    err = f'<p class="error">{esc(error)}</p>' if error else ""
    body = f"""{err}<form method="post" action="/login" class="card narrow">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<input type="hidden" name="login_csrf" value="{attr(login_csrf)}">
<button type="submit">Log in</button>
<p class="hint">Print a fresh token with <code>stockade admin token</code> (the previous one stops working).</p>
</form>"""
    return layout("Log in", body, csrf=None)


def _plain(v: Any, depth: int = 0) -> str:
    """A health value in words: yes/no, lists joined, nested mappings as `key value` pairs."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return ", ".join(_plain(x, depth + 1) for x in v) or "none"
    if isinstance(v, dict):
        if depth >= 2:
            return f"{len(v)} entries"
        return "; ".join(f"{k.replace('_', ' ')} {_plain(x, depth + 1)}" for k, x in sorted(v.items())) or "none"
    return str(v)


def details(d: dict[str, Any]) -> str:
    """A layer's health detail as a readable list (`key  value`), not JSON."""
    if not d:
        return ""
    items = "".join(f"<li><span class='k'>{esc(str(k).replace('_', ' '))}</span> {esc(_plain(v))}</li>"
                    for k, v in sorted(d.items()))
    return f"<ul class='kv'>{items}</ul>"


def _ports(ports: Any) -> str:
    if not isinstance(ports, dict):
        return str(ports)
    return ", ".join(f"{k} {v}" for k, v in sorted(ports.items())) or "none"


def overview(d: dict[str, Any], csrf: str) -> str:
    layers = "".join(f"<tr><td>{esc(k)}</td><td>{badge(v.get('status', '?') if isinstance(v, dict) else v)}</td>"
                     f"<td>{details({x: y for x, y in v.items() if x != 'status'})}</td></tr>"
                     for k, v in sorted(d["layers"].items()) if isinstance(v, dict))
    audit = d.get("audit") or {}
    return layout("Overview", f"""
<section class="tiles">
 <div class="tile"><div class="big">{badge(d['status'])}</div><div>overall</div></div>
 <div class="tile"><div class="big"><a href="/approvals">{esc(d['pending_approvals'])}</a></div>
  <div>pending approvals</div></div>
 <div class="tile"><div class="big">{esc(d['agents_active'])}</div><div>active agents</div></div>
 <div class="tile"><div class="big">{badge(d['vault'])}</div><div>vault</div></div>
 <div class="tile"><div class="big">{badge(audit.get('status', 'unknown'))}</div><div>audit chain</div></div>
</section>
<h2>Layers</h2>
<table><thead><tr><th>layer</th><th>status</th><th>detail</th></tr></thead><tbody>{layers or
  '<tr><td colspan=3>no layer has reported yet</td></tr>'}</tbody></table>
<p class="hint">Gateway up since {esc(ts(d['started']))}; ports {esc(_ports(d['ports']))}.</p>""",
                  csrf=csrf, active="/")


def _args(a: dict[str, Any]) -> str:
    return f'<pre class="args">{pretty(a.get("args"))}</pre>'


def notice(done: dict[str, Any] | None) -> str:
    """What the owner just decided, confirmed on the page they land on."""
    if not done:
        return ""
    verb = {"approved": "Approved", "executed": "Approved", "running": "Approved", "failed": "Approved",
            "rejected": "Rejected", "expired": "Too late: expired"}.get(str(done.get("status")), "Decided")
    return (f'<p class="notice" role="status" id="notice">{esc(verb)} <code>{esc(done.get("approval"))}</code>: '
            f'{esc(done.get("agent"))} → {esc(done.get("capability"))} (now {badge(done.get("status"))}).</p>')


def approvals(items: list[dict[str, Any]], grants: list[dict[str, Any]], csrf: str,
              just_decided: dict[str, Any] | None = None) -> str:
    pending = [a for a in items if a["status"] == "pending"]
    done = [a for a in items if a["status"] != "pending"]
    cards = "".join(approval_card(a, csrf) for a in pending) or '<p class="empty">Nothing is waiting for you.</p>'
    rows = "".join(f"<tr><td><a href='/approvals/{esc(a['approval'])}'>{esc(a['approval'])}</a></td>"
                   f"<td>{esc(a['agent'])}</td><td>{esc(a['capability'])}</td><td>{badge(a['status'])}</td>"
                   f"<td>{esc(ts(a.get('decided') or a.get('finished')))}</td>"
                   f"<td>{esc(who_text(a.get('decided_by')))}</td></tr>"
                   for a in done[:100])
    grows = "".join(f"<tr><td>{esc(g['grant'])}</td><td>{esc(g['agent'])}</td><td>{esc(g['capability'])}</td>"
                    f"<td>{esc(ts(g['expires']))}</td><td><form method=post action='/grants/{esc(g['grant'])}/revoke'>"
                    f"<input type=hidden name=csrf value='{esc(csrf)}'><button class=danger>Revoke</button>"
                    "</form></td></tr>"
                    for g in grants)
    return layout("Approvals", f"""{notice(just_decided)}
<p class="hint" id="live-note">This page updates when a new request arrives.</p>
<section id="pending">{cards}</section>
<h2>Time-limited grants</h2>
<table><thead><tr><th>grant</th><th>agent</th><th>capability</th><th>until</th><th></th></tr></thead>
<tbody>{grows or '<tr><td colspan=5>none</td></tr>'}</tbody></table>
<h2>Decided</h2>
<table><thead><tr><th>id</th><th>agent</th><th>capability</th><th>status</th><th>when</th><th>by</th></tr></thead>
<tbody>{rows or '<tr><td colspan=6>none yet</td></tr>'}</tbody></table>""", csrf=csrf, active="/approvals")


def suspicious(a: dict[str, Any]) -> bool:
    """Whether anything the agent supplied to this approval hides characters (warned about)."""
    return show_json([a.get("args"), a.get("agent"), a.get("capability")]).suspicious


def approval_card(a: dict[str, Any], csrf: str) -> str:
    aid = attr(a["approval"])
    buttons = ""
    if a["status"] == "pending":
        buttons = f"""<div class="actions">
<form method="post" action="/approvals/{aid}/approve"><input type="hidden" name="csrf" value="{esc(csrf)}">
<button class="ok" id="approve-{aid}">Approve this call</button></form>
<form method="post" action="/approvals/{aid}/approve"><input type="hidden" name="csrf" value="{esc(csrf)}">
<input type="number" name="grant_minutes" min="1" max="10080" value="30" aria-label="minutes">
<button>Approve + allow {esc(a['capability'])} for N minutes</button></form>
<form method="post" action="/approvals/{aid}/reject"><input type="hidden" name="csrf" value="{esc(csrf)}">
<input name="reason" placeholder="reason (shown to the agent)" maxlength="1000">
<button class="danger" id="reject-{aid}">Reject</button></form></div>"""
    extra = ""
    if "result" in a:
        extra += f"<h3>Result</h3><pre class='args'>{pretty(a['result'])}</pre>"
    if "error" in a:
        extra += f"<h3>Error</h3><pre class='args'>{pretty(a['error'])}</pre>"
    if a.get("reason"):
        extra += f"<p>Reason: {esc(a['reason'])}</p>"
    return f"""<article class="card approval" data-id="{aid}">
<div class="row"><a href="/approvals/{aid}"><code>{aid}</code></a> {badge(a['status'])}
<span class="agent">{esc(a['agent'])}</span> wants <strong class="cap">{esc(a['capability'])}</strong></div>
<div class="meta">requested {esc(ts(a['created']))} · expires {esc(ts(a['expires']))} · rule {esc(a.get('rule'))}
{(' · ' + esc(a.get('policy_reason'))) if a.get('policy_reason') else ''}
· args sha256 <code>{esc(a['args_hash'][:16])}…</code></div>
<h3>Exact arguments</h3>{warning(suspicious(a))}{_args(a)}{buttons}{extra}</article>"""


def approval_page(a: dict[str, Any], csrf: str) -> str:
    return layout(f"Approval {a['approval']}", approval_card(a, csrf), csrf=csrf, active="/approvals")


def _tier_select(selected: Any) -> str:
    opts = "".join(f'<option value="{attr(t)}"{" selected" if t == selected else ""}>{attr(t or "any tier")}</option>'
                   for t in ("", *TIERS))
    return f'<select name="tier" aria-label="tier">{opts}</select>'


def activity(csrf: str) -> str:
    return layout("Live activity", f"""
<p class="hint">Events stream live from the gateway: notify-tier calls, denials, rate limits, approvals,
health alerts, policy reloads. <span id="conn" class="badge b-unknown">connecting</span></p>
<form class="filters" id="ev-filters" role="search">
<input name="agent" placeholder="agent" aria-label="agent">
<input name="capability" placeholder="capability" aria-label="capability">
{_tier_select("")}
<input name="kind" placeholder="event type (e.g. approval.)" aria-label="event type">
</form>
<div class="scroll"><table id="events"><thead><tr><th>time</th><th>severity</th><th>kind</th><th>agent</th>
<th>capability</th><th>tier</th><th>detail</th></tr></thead><tbody></tbody></table></div>""",
                  csrf=csrf, active="/activity")


def agents(rows: list[dict[str, Any]], csrf: str) -> str:
    out = []
    for r in rows:
        tiers = "".join(f"<tr><td>{esc(c)}</td><td>{_tier_cell(t, r.get('ranges', {}).get(c))}</td></tr>"
                        for c, t in sorted(r["tiers"].items()))
        revoke = "" if r["status"] != "active" else (
            f"<a class='button danger' href='/agents/{attr(quote(str(r['name']), safe=''))}/revoke'>Revoke key…</a>")
        profile = f"<pre class='args'>{pretty(r['sandbox'])}</pre>" if r.get("sandbox") else \
            "<p class='hint'>sandbox profile: not reported by the policy part</p>"
        out.append(f"""<article class="card"><div class="row"><strong>{esc(r['name'])}</strong> {badge(r['status'])}
<span class="meta">created {esc(ts(r['created']))} · pending approvals {esc(r['pending'])}</span>{revoke}</div>
<details><summary>Effective tier per capability</summary><table>{tiers}</table></details>
<details><summary>Sandbox profile</summary>{profile}</details></article>""")
    return layout("Agents", "".join(out) or "<p class='empty'>No agents yet (stockade agent create NAME).</p>",
                  csrf=csrf, active="/agents")


def _tier_cell(tier: Any, look: dict[str, Any] | None) -> str:
    """One tier, or where the arguments decide: the range and the rules that decide it."""
    if not look:
        return badge(tier)
    rules = "".join(f"<li>{badge(x.get('tier'))} <code>{esc(x.get('rule'))}</code> when "
                    f"<code>{esc(show_json(x.get('when'), indent=None).text)}</code>"
                    f"{' · ' + esc(x['reason']) if x.get('reason') else ''}</li>" for x in look.get("rules", []))
    return (f"{badge(look.get('min_tier'))} to {badge(look.get('max_tier'))} <small>depends on arguments</small>"
            f"<details><summary>rules that decide</summary><ul class='rules'>{rules}</ul></details>")


def revoke_confirm(name: str, csrf: str) -> str:
    """Revoking a key cannot be undone (the agent needs a new key): ask first."""
    return layout("Revoke key", f"""<article class="card narrow">
<p>Revoke the key of <strong>{esc(name)}</strong>? Its calls stop at once, its pending approvals end, and it
needs a new key (<code>stockade agent create</code>) to work again. This cannot be undone.</p>
<div class="actions"><form method="post" action="/agents/{attr(quote(name, safe=''))}/revoke">
<input type="hidden" name="csrf" value="{attr(csrf)}"><button class="danger" id="revoke-confirm">Revoke the key of
{esc(name)}</button></form><a class="button" href="/agents">Cancel</a></div></article>""", csrf=csrf, active="/agents")


def _sub(r: dict[str, Any], key: str, sub: str) -> Any:
    """`decision.tier` of a call record; events carry plain values there (e.g. decision: approved)."""
    v = r.get(key)
    return v.get(sub) if isinstance(v, dict) else v


def audit(d: dict[str, Any], csrf: str) -> str:
    if not d.get("available"):
        return layout("Audit", "<p class='empty'>audit not available: the audit part is not running on this "
                               "gateway (no query functions).</p>", csrf=csrf, active="/audit")
    f = d.get("filters", {})
    rows = "".join(f"<tr><td>{esc(r.get('seq'))}</td><td>{esc(ts((r.get('ts') or 0) / 1e6))}</td>"
                   f"<td>{esc(r.get('kind') or 'call')}</td><td>{esc(r.get('agent'))}</td>"
                   f"<td>{esc(r.get('capability'))}</td><td>{esc(_sub(r, 'decision', 'tier'))}</td>"
                   f"<td>{esc(_sub(r, 'outcome', 'status'))}</td>"
                   f"<td><details><summary>record</summary><pre class='args'>{pretty(r)}</pre>{_session_link(r)}"
                   f"</details></td></tr>"
                   for r in d.get("records", []))
    verify = d.get("verify")
    vres = f"<pre class='args'>{pretty(verify)}</pre>" if verify else ""
    bad = "".join(f"<p class='warn'>{esc(m)}</p>" for m in d.get("undecodable", []))
    return layout("Audit", f"""{bad}
<form method="get" action="/audit" class="filters">
<input name="agent" placeholder="agent" value="{attr(f.get('agent'))}">
<input name="capability" placeholder="capability" value="{attr(f.get('capability'))}">
{_tier_select(f.get('tier', ''))}
<input name="kind" placeholder="event type" aria-label="event type" value="{attr(f.get('kind'))}">
<input name="limit" type="number" min="1" max="1000" value="{esc(f.get('limit', 100))}">
<button>Filter</button></form>
<form method="post" action="/audit/verify"><input type="hidden" name="csrf" value="{esc(csrf)}">
<button id="verify">Verify now</button></form>{vres}
<table><thead><tr><th>seq</th><th>time</th><th>kind</th><th>agent</th><th>capability</th><th>tier</th><th>outcome</th>
<th></th></tr></thead><tbody>{rows or '<tr><td colspan=8>no records</td></tr>'}</tbody></table>""",
                  csrf=csrf, active="/audit")


def _session_link(r: dict[str, Any]) -> str:
    sid = r.get("session")
    if not isinstance(sid, str) or not sid:
        return ""
    return f"<a href='/audit/session/{attr(quote(sid, safe=''))}'>session {esc(sid)}: timeline</a>"


def session_page(d: dict[str, Any], csrf: str) -> str:
    """One session's calls in order: decision, approval, outcome, duration."""
    sid = d.get("session", "")
    if not d.get("available"):
        return layout("Session", "<p class='empty'>audit not available on this gateway.</p>", csrf=csrf,
                      active="/audit")
    rows = []
    for e in d.get("calls", []):
        if "kind" in e:
            rows.append(f"<tr><td>{esc(e.get('seq'))}</td><td>{esc(ts((e.get('ts') or 0) / 1e6))}</td>"
                        f"<td colspan=5>{esc(e['kind'])}</td><td><details><summary>record</summary>"
                        f"<pre class='args'>{pretty(e.get('record'))}</pre></details></td></tr>")
            continue
        dec, out, appr = e.get("decision") or {}, e.get("outcome") or {}, e.get("approval") or {}
        status = f"{out.get('status', '?')}" + (f" ({out['error']})" if out.get("error") else "")
        who = f" by {show_json(appr['by']).text}" if appr.get("by") else ""
        dur = f"{e['duration_us'] / 1000:.1f} ms" if isinstance(e.get("duration_us"), int) else ""
        rows.append(f"<tr><td>{esc(e.get('seq'))}</td><td>{esc(ts((e.get('ts') or 0) / 1e6))}</td>"
                    f"<td>{esc(e.get('capability'))}</td><td>{esc(dec.get('tier'))} <small>{esc(dec.get('rule'))}"
                    f"</small></td><td>{esc((appr.get('status') or '') + who)}</td><td>{esc(status)}</td>"
                    f"<td>{esc(dur)}</td><td><details><summary>arguments</summary>"
                    f"<pre class='args'>{pretty(e.get('args'))}</pre></details></td></tr>")
    bad = "".join(f"<p class='warn'>{esc(m)}</p>" for m in d.get("undecodable", []))
    return layout(f"Session {sid}", f"""<p class="hint">Every call of session <code>{esc(sid)}</code> in order
(<a href="/audit">all records</a>).</p>{bad}
<table><thead><tr><th>seq</th><th>time</th><th>capability</th><th>decision</th><th>approval</th><th>outcome</th>
<th>duration</th><th></th></tr></thead><tbody>{''.join(rows) or '<tr><td colspan=8>no calls</td></tr>'}</tbody>
</table>""", csrf=csrf, active="/audit")


def vault_state(d: dict[str, Any]) -> str:
    if d.get("initialized") is False:
        return "not set up"
    return "sealed" if d.get("sealed") else "unsealed"


def secrets(d: dict[str, Any], csrf: str) -> str:
    if not d.get("available"):
        return layout("Secrets", "<p class='empty'>vault not available on this gateway.</p>", csrf=csrf,
                      active="/secrets")
    rows = "".join(f"<tr><td><code>{esc(r['name'])}</code></td>"
                   f"<td>{esc(', '.join(r.get('scope') or []) or 'any')}</td>"
                   f"<td>{esc(', '.join(r.get('hosts') or []) or 'any')}</td><td>{esc(ts(r.get('updated')))}</td>"
                   f"<td>{esc(ts(r.get('last_used')) or 'never')}</td></tr>" for r in d["secrets"])
    return layout("Secrets", f"""<p class="hint">Names and scopes only: values never leave the vault
(vault {badge(vault_state(d))}). Manage with <code>stockade vault</code>.</p>
<table><thead><tr><th>name</th><th>capabilities</th><th>hosts</th><th>updated</th><th>last used</th></tr></thead>
<tbody>{rows or '<tr><td colspan=5>no secrets</td></tr>'}</tbody></table>""", csrf=csrf, active="/secrets")


def packs(d: dict[str, Any], csrf: str) -> str:
    if not d.get("available"):
        return layout("Packs", "<p class='empty'>packs not available on this gateway.</p>", csrf=csrf,
                      active="/packs")
    rows = "".join(f"<tr><td>{esc(p['name'])}</td><td>{esc(p['version'])}</td><td>{esc(p['publisher'])}</td>"
                   f"<td><code>{esc(str(p.get('manifest_sha256'))[:16])}…</code></td>"
                   f"<td>{esc(ts(p.get('installed_at')))}</td></tr>" for p in d["packs"])
    return layout("Packs", f"""<p class="hint">Signed packs installed on this gateway (verified before each run).
Manage with <code>stockade pack</code>.</p>
<table><thead><tr><th>name</th><th>version</th><th>publisher</th><th>manifest sha256</th><th>installed</th></tr>
</thead><tbody>{rows or '<tr><td colspan=5>no packs installed</td></tr>'}</tbody></table>""",
                  csrf=csrf, active="/packs")


def error_page(status: int, message: str, csrf: str | None = None) -> str:
    return layout(f"Error {status}", f"<p class='error'>{esc(message)}</p>", csrf=csrf)
