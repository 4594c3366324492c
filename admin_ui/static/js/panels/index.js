// The panels, in navigation order. A panel module's default export is
//   { id, title, group, view }   where view({ route }) is a Preact component and route = { path, query }.
import aliases from "./aliases.js";
import health from "./health.js";
import models from "./models.js";
import providers from "./providers.js";
import routing from "./routing.js";
import tenants from "./tenants.js";

export const PANELS = [health, providers, models, aliases, routing, tenants];
