// The request-flow graph: clients → TokenHub → providers → models, drawn by Cytoscape in four columns.
// Nodes are coloured by health; an edge pulses (wider, coloured) when a request crosses it and decays back.
// The node count is capped so a flood of new API keys or discovered models cannot grow it without bound.
import cytoscape from "../../../vendor/cytoscape.js";

export const MAX_CLIENTS = 8; // named clients beyond this share the "other" node
export const MAX_MODELS = 40;
const MAX_PROVIDERS = 20;
const DECAY = 0.8; // per tick (TICK_MS): a pulse fades in about two seconds
export const TICK_MS = 250;
const RECENT_MS = 5 * 60 * 1000;

const COLOURS = {
  healthy: "#1f883d",
  degraded: "#b7791f",
  down: "#cf222e",
  unknown: "#6e7781",
  disabled: "#afb8c1",
  hub: "#2f6feb",
  client: "#8250df",
  idle: "#afb8c1",
  traffic: "#2f6feb",
  error: "#cf222e",
};

const STYLE = [
  {
    selector: "node",
    style: {
      label: "data(label)",
      "background-color": "data(colour)",
      color: "data(text)",
      "font-size": 11,
      "text-valign": "bottom",
      "text-margin-y": 4,
      width: 22,
      height: 22,
      "border-width": "data(border)",
      "border-color": "#2f6feb",
    },
  },
  { selector: "node[kind = 'hub']", style: { shape: "round-rectangle", width: 70, height: 30, "text-valign": "center", "text-margin-y": 0, color: "#fff", "font-weight": "bold" } },
  { selector: "node[kind = 'provider']", style: { shape: "round-rectangle", width: 28, height: 28 } },
  { selector: "node[kind = 'client']", style: { shape: "ellipse" } },
  { selector: "node[kind = 'model']", style: { shape: "diamond" } },
  {
    selector: "edge",
    style: {
      width: "data(width)",
      "line-color": "data(colour)",
      "target-arrow-color": "data(colour)",
      "target-arrow-shape": "triangle",
      "arrow-scale": 0.8,
      "curve-style": "bezier",
      opacity: 0.9,
    },
  },
];

// Cytoscape injects a <style> for its container's `position: relative` unless an element with this id exists;
// the CSP refuses inline styles, so the rule is in app.css and a marker element stands in for the <style>.
const CYTOSCAPE_STYLESHEET_ID = "__________cytoscape_stylesheet";

function markCytoscapeStylesheet() {
  if (document.getElementById(CYTOSCAPE_STYLESHEET_ID)) return;
  const marker = document.createElement("meta");
  marker.id = CYTOSCAPE_STYLESHEET_ID;
  document.head.append(marker);
}

export class FlowGraph {
  constructor(container, { dark = false } = {}) {
    markCytoscapeStylesheet();
    this.text = dark ? "#e6e9ee" : "#1b1f24";
    this.cy = cytoscape({
      container,
      style: STYLE,
      elements: [],
      userZoomingEnabled: true,
      userPanningEnabled: true,
      boxSelectionEnabled: false,
      autoungrabify: true,
      minZoom: 0.3,
      maxZoom: 3,
    });
    this.providers = new Map(); // id -> {state, breaker, enabled}
    this.models = new Map(); // id -> {provider, routable, enabled}
    this.clients = new Set();
    this.activity = new Map(); // edge id -> {level, error, total, errors, last}
    this.requests = new Map(); // node id -> [timestamps of recent requests] (bounded by RECENT cap)
    this.addNode("hub", "hub", "TokenHub");
  }

  destroy() {
    this.cy.destroy();
  }

  /** The configured topology: providers and models from the API, health from GET /health. */
  setTopology({ providers, models, health }) {
    const states = new Map((health || []).map((h) => [h.provider_id, h]));
    for (const p of providers.slice(0, MAX_PROVIDERS)) {
      const h = states.get(p.id);
      this.providers.set(p.id, { enabled: p.enabled, state: h?.state || "unknown", breaker: h?.breaker || "closed" });
    }
    for (const m of models) {
      if (!this.providers.has(m.provider_id)) continue;
      if (!this.models.has(m.id) && this.models.size >= MAX_MODELS) continue;
      this.models.set(m.id, { provider: m.provider_id, routable: m.routable !== false, enabled: m.enabled !== false });
    }
    const keepProviders = new Set(providers.map((p) => p.id));
    for (const id of [...this.providers.keys()]) if (!keepProviders.has(id)) this.providers.delete(id);
    const keepModels = new Set(models.map((m) => m.id));
    for (const id of [...this.models.keys()]) if (!keepModels.has(id) && !this.models.get(id).seen) this.models.delete(id);
    this.render();
  }

  /** A health_change event or a fresh GET /health row. */
  setHealth(providerId, state, breaker) {
    const p = this.providers.get(providerId);
    if (!p) return;
    if (state) p.state = state;
    if (breaker) p.breaker = breaker;
    this.recolour();
  }

  providerState(id) {
    return this.providers.get(id)?.state;
  }

  /** A route_success / route_error event: make sure its path exists, then pulse it. */
  traffic(event, now = Date.now()) {
    const error = event.type === "route_error";
    const client = this.clientFor(event.api_key_name);
    const path = [`c:${client}`, "hub"];
    const provider = event.provider_id;
    if (provider) {
      if (!this.providers.has(provider) && this.providers.size < MAX_PROVIDERS) {
        this.providers.set(provider, { enabled: true, state: "unknown", breaker: "closed" });
      }
      if (this.providers.has(provider)) {
        path.push(`p:${provider}`);
        const model = event.model_id;
        if (model && !this.models.has(model) && this.models.size < MAX_MODELS) {
          this.models.set(model, { provider, routable: true, enabled: true, seen: true });
        }
        if (model && this.models.has(model)) path.push(`m:${model}`);
      }
    }
    this.render();
    for (let i = 0; i + 1 < path.length; i++) this.pulse(`${path[i]}>${path[i + 1]}`, error, now);
    for (const id of path) this.count(id, now);
    this.restyleEdges();
  }

  clientFor(name) {
    const client = name || "anonymous";
    if (this.clients.has(client) || client === "anonymous") return client;
    if (this.clients.size < MAX_CLIENTS) {
      this.clients.add(client);
      return client;
    }
    return "other";
  }

  pulse(edgeId, error, now) {
    const a = this.activity.get(edgeId) || { level: 0, error: 0, total: 0, errors: 0, last: 0 };
    a.level = Math.min(a.level + 1, 6);
    a.error = error ? 1 : a.error;
    a.total += 1;
    a.errors += error ? 1 : 0;
    a.last = now;
    this.activity.set(edgeId, a);
  }

  count(nodeId, now) {
    const list = this.requests.get(nodeId) || [];
    list.push(now);
    while (list.length && (list[0] < now - RECENT_MS || list.length > 10_000)) list.shift();
    this.requests.set(nodeId, list);
  }

  /** Called every TICK_MS: pulses fade. Returns whether anything is still moving. */
  tick() {
    let moving = false;
    for (const a of this.activity.values()) {
      if (a.level > 0.02 || a.error > 0.02) moving = true;
      a.level = a.level > 0.02 ? a.level * DECAY : 0;
      a.error = a.error > 0.02 ? a.error * DECAY : 0;
    }
    if (moving) this.restyleEdges();
    return moving;
  }

  // ------------------------------------------------------------------ drawing

  addNode(id, kind, label) {
    if (this.cy.getElementById(id).nonempty()) return;
    this.cy.add({ group: "nodes", data: { id, kind, label, colour: COLOURS.unknown, text: this.text, border: 0 } });
  }

  addEdge(source, target) {
    const id = `${source}>${target}`;
    if (this.cy.getElementById(id).nonempty()) return;
    this.cy.add({ group: "edges", data: { id, source, target, width: 1.5, colour: COLOURS.idle } });
  }

  /** Adds what is missing, removes what is gone, lays the columns out when the set of nodes changed. */
  render() {
    const before = this.cy.nodes().length + this.cy.edges().length;
    const want = new Set(["hub"]);
    const clients = [...this.clients];
    for (const id of ["anonymous", "other"]) if (this.requests.has(`c:${id}`) || this.activity.has(`c:${id}>hub`)) clients.push(id);
    for (const c of clients) {
      want.add(`c:${c}`);
      this.addNode(`c:${c}`, "client", c);
      this.addEdge(`c:${c}`, "hub");
    }
    for (const [id] of this.providers) {
      want.add(`p:${id}`);
      this.addNode(`p:${id}`, "provider", id);
      this.addEdge("hub", `p:${id}`);
    }
    for (const [id, m] of this.models) {
      if (!this.providers.has(m.provider)) continue;
      want.add(`m:${id}`);
      this.addNode(`m:${id}`, "model", id);
      this.addEdge(`p:${m.provider}`, `m:${id}`);
    }
    this.cy.nodes().filter((n) => !want.has(n.id())).remove(); // their edges go with them
    if (this.cy.nodes().length + this.cy.edges().length !== before) this.layout();
    this.recolour();
  }

  layout() {
    const columns = { client: [], hub: [], provider: [], model: [] };
    this.cy.nodes().forEach((n) => columns[n.data("kind")].push(n));
    // Models sit next to their provider: order them by provider, then name.
    columns.model.sort((a, b) => {
      const pa = this.models.get(a.data("label"))?.provider || "";
      const pb = this.models.get(b.data("label"))?.provider || "";
      return pa.localeCompare(pb) || a.data("label").localeCompare(b.data("label"));
    });
    columns.provider.sort((a, b) => a.data("label").localeCompare(b.data("label")));
    columns.client.sort((a, b) => a.data("label").localeCompare(b.data("label")));
    const tallest = Math.max(...Object.values(columns).map((c) => c.length), 1);
    const gap = 56;
    ["client", "hub", "provider", "model"].forEach((kind, col) => {
      const nodes = columns[kind];
      const offset = ((tallest - nodes.length) * gap) / 2;
      nodes.forEach((n, i) => n.position({ x: col * 190, y: offset + i * gap }));
    });
    this.cy.fit(undefined, 30);
  }

  providerColour(id) {
    const p = this.providers.get(id);
    if (!p) return COLOURS.unknown;
    if (!p.enabled) return COLOURS.disabled;
    if (p.state === "down" || p.breaker === "open") return COLOURS.down;
    if (p.state === "degraded" || p.breaker === "half_open") return COLOURS.degraded;
    return COLOURS[p.state] || COLOURS.unknown;
  }

  recolour() {
    this.cy.batch(() => {
      this.cy.nodes().forEach((n) => {
        const kind = n.data("kind");
        const id = n.id().slice(2);
        let colour = COLOURS.unknown;
        if (kind === "hub") colour = COLOURS.hub;
        else if (kind === "client") colour = COLOURS.client;
        else if (kind === "provider") colour = this.providerColour(id);
        else if (kind === "model") {
          const m = this.models.get(id);
          colour = m && m.enabled && m.routable ? this.providerColour(m.provider) : COLOURS.disabled;
        }
        n.data("colour", colour);
      });
    });
  }

  restyleEdges() {
    this.cy.batch(() => {
      this.cy.edges().forEach((e) => {
        const a = this.activity.get(e.id());
        const level = a ? a.level : 0;
        e.data("width", 1.5 + level * 1.5);
        e.data("colour", a && a.error > 0.3 ? COLOURS.error : level > 0.3 ? COLOURS.traffic : COLOURS.idle);
      });
      // A node glows with the busiest edge that touches it.
      const levels = new Map();
      for (const [id, a] of this.activity) {
        for (const end of id.split(">")) levels.set(end, Math.max(levels.get(end) || 0, a.level));
      }
      this.cy.nodes().forEach((n) => {
        const level = levels.get(n.id()) || 0;
        n.data("border", level > 0.3 ? Math.min(6, 1 + level) : 0);
      });
    });
  }

  /** What the canvas shows, as data: for the accessible description and the tests. */
  describe(now = Date.now()) {
    const recent = (id) => (this.requests.get(id) || []).filter((t) => t >= now - RECENT_MS).length;
    const nodes = this.cy.nodes().map((n) => {
      const kind = n.data("kind");
      const id = n.id().slice(2);
      let state = "";
      if (kind === "provider") {
        const p = this.providers.get(id);
        state = !p.enabled ? "disabled" : p.breaker === "open" ? "down" : p.state;
      } else if (kind === "model") {
        const m = this.models.get(id);
        state = m.enabled && m.routable ? this.describeProvider(m.provider) : "not routable";
      }
      return { id: n.id(), kind, label: n.data("label"), state, colour: n.data("colour"), requests: recent(n.id()) };
    });
    const edges = this.cy.edges().map((e) => {
      const a = this.activity.get(e.id());
      return {
        id: e.id(),
        source: e.source().data("label"),
        target: e.target().data("label"),
        active: !!a && a.level > 0.3,
        total: a ? a.total : 0,
        errors: a ? a.errors : 0,
      };
    });
    return { nodes, edges };
  }

  describeProvider(id) {
    const p = this.providers.get(id);
    if (!p) return "unknown";
    return !p.enabled ? "disabled" : p.breaker === "open" ? "down" : p.state;
  }
}
