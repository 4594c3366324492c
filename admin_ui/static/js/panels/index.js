// The panels, in navigation order (their groups appear in the order of their first panel). A panel module's
// default export is { id, title, group, view } where view({ route }) is a Preact component and
// route = { path, query }.
import aliases from "./aliases.js";
import audit from "./audit.js";
import analystConsole from "./console.js";
import health from "./health.js";
import keys from "./keys.js";
import live from "./live.js";
import models from "./models.js";
import providers from "./providers.js";
import requests from "./requests.js";
import routing from "./routing.js";
import tenants from "./tenants.js";
import trends from "./trends.js";
import vault from "./vault.js";
import workflows from "./workflows.js";

export const PANELS = [
  live,
  health,
  requests,
  workflows,
  providers,
  models,
  aliases,
  routing,
  tenants,
  keys,
  vault,
  audit,
  trends,
  analystConsole,
];
