// The panels, in navigation order. A panel module's default export is
//   { id, title, group, view }   where view({ route }) is a Preact component and route = { path, query }.
import audit from "./audit.js";
import health from "./health.js";
import keys from "./keys.js";
import requests from "./requests.js";
import vault from "./vault.js";

export const PANELS = [health, requests, keys, audit, vault];
