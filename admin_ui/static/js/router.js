// Hash routes: #/<panel id>/<more/segments>?<query>. The hash keeps every view linkable and reloadable
// without any server-side route.
import { useEffect, useState } from "../vendor/preact-htm.js";

export function parseHash(hash = window.location.hash) {
  const [path, search = ""] = hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { panel: parts[0] || "", path: parts.slice(1), query: Object.fromEntries(new URLSearchParams(search)) };
}

/** "#/<panel>/<segments…>?<query>" from parts; empty query values are left out. */
export function href(panel, path = [], query = {}) {
  const segs = [panel, ...path].map((p) => encodeURIComponent(p)).join("/");
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v !== undefined && v !== null));
  const qs = q.toString();
  return `#/${segs}${qs ? `?${qs}` : ""}`;
}

export function navigate(panel, path = [], query = {}) {
  window.location.hash = href(panel, path, query);
}

/** The current route, updated on every hash change. */
export function useRoute() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const update = () => setRoute(parseHash());
    window.addEventListener("hashchange", update);
    return () => window.removeEventListener("hashchange", update);
  }, []);
  return route;
}
