// The admin UI's shell: the sign-in gate, the navigation and the panel the hash names.
import { currentSession, signIn, signOut, whenSignedOut } from "./api.js";
import { close as closeEvents, onStatus } from "./events.js";
import { PANELS } from "./panels/index.js";
import { href, parseHash, useRoute } from "./router.js";
import { ErrorBox, html, useAction } from "./ui.js";
import { render, useEffect, useState } from "../vendor/preact-htm.js";

const LANDING = PANELS[0].id;

function SignIn({ onSignedIn, expired }) {
  const [token, setToken] = useState("");
  const action = useAction(async () => onSignedIn(await signIn(token.trim())));
  const submit = (e) => {
    e.preventDefault();
    action.run();
  };
  return html`<main class="signin">
    <form onSubmit=${submit} aria-label="sign in">
      <h1>TokenHub admin</h1>
      ${expired ? html`<p class="notice warn" role="status">Your session ended: sign in again.</p>` : ""}
      <label for="admin-token">Admin token</label>
      <input id="admin-token" name="token" type="password" autocomplete="current-password" required
        value=${token} onInput=${(e) => setToken(e.target.value)} autofocus />
      <small class="muted">Printed at first start; <code>tokenhub admin-token</code> prints it again.</small>
      <${ErrorBox} error=${action.error} />
      <button type="submit" class="primary" disabled=${action.busy || !token.trim()}>Sign in</button>
    </form>
  </main>`;
}

function LiveStatus() {
  const [status, setStatus] = useState("closed");
  useEffect(() => onStatus(setStatus), []);
  if (status === "closed") return null; // no panel on screen listens to the event stream
  return html`<span class=${`live-status ${status}`} title="event stream">${status === "live" ? "● live" : status}</span>`;
}

function Shell({ onSignOut }) {
  const route = useRoute();
  const [menuOpen, setMenuOpen] = useState(false);
  const panel = PANELS.find((p) => p.id === route.panel) || null;
  useEffect(() => {
    // Only if the address still names no panel: a navigation made meanwhile must not be overwritten.
    if (!route.panel && !parseHash().panel) window.location.replace(href(LANDING));
    setMenuOpen(false);
    document.title = `${panel ? panel.title : "Not found"} · TokenHub admin`;
  }, [route.panel]);
  const groups = [...new Set(PANELS.map((p) => p.group))];
  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header class="topbar">
      <button class="ghost menu-toggle" aria-expanded=${menuOpen} aria-controls="nav"
        onClick=${() => setMenuOpen(!menuOpen)}>☰</button>
      <span class="brand">TokenHub</span>
      <${LiveStatus} />
      <button class="ghost" onClick=${onSignOut}>Sign out</button>
    </header>
    <nav id="nav" class=${menuOpen ? "open" : ""} aria-label="panels">
      ${groups.map(
        (group) => html`<div class="nav-group">
          <div class="nav-title">${group}</div>
          ${PANELS.filter((p) => p.group === group).map(
            (p) => html`<a href=${href(p.id)} aria-current=${p.id === route.panel ? "page" : undefined}
              onClick=${() => setMenuOpen(false)}>${p.title}</a>`,
          )}
        </div>`,
      )}
    </nav>
    <main id="main" tabindex="-1">
      ${panel
        ? html`<${panel.view} key=${panel.id} route=${route} />`
        : route.panel && html`<p class="error">No panel named “${route.panel}”. <a href=${href(LANDING)}>Go to the start</a>.</p>`}
    </main>
  </div>`;
}

function App() {
  const [state, setState] = useState({ phase: "checking", expired: false });
  useEffect(() => {
    whenSignedOut(() => {
      closeEvents();
      setState({ phase: "signed-out", expired: true });
    });
    currentSession().then(
      (s) => setState({ phase: s.signed_in ? "signed-in" : "signed-out", expired: false }),
      () => setState({ phase: "signed-out", expired: false }),
    );
  }, []);
  const leave = async () => {
    closeEvents();
    await signOut().catch(() => {});
    setState({ phase: "signed-out", expired: false });
  };
  if (state.phase === "checking") return html`<p class="muted center">Loading…</p>`;
  if (state.phase === "signed-out") {
    return html`<${SignIn} expired=${state.expired} onSignedIn=${() => setState({ phase: "signed-in" })} />`;
  }
  return html`<${Shell} onSignOut=${leave} />`;
}

render(html`<${App} />`, document.getElementById("app"));
