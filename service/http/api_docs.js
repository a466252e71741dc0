// Swagger UI over this process's own OpenAPI document (a script file: the page's CSP allows
// no inline script). Paths are relative, so the page works behind a path prefix too.
"use strict";

window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default validator badge loads an image from another site.
    validatorUrl: null,
  });
});
