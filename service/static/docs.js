"use strict";
// Swagger UI over this service's own OpenAPI document. validatorUrl: null keeps the UI from
// sending the document to an online validator (the page loads nothing from another origin).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
