// segearth serve: the API docs page. Swagger UI from /static/vendor (no CDN), and the access token of
// a server started with --token, shared with the main page through this tab's sessionStorage.
"use strict";

const TOKEN_KEY = "segearth-token";

function withToken(request) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) request.headers.Authorization = "Bearer " + token;
  return request;
}

async function start() {
  const spec = await fetch("/openapi.json", withToken({ headers: {} }));
  if (spec.status === 401) {
    const token = window.prompt("This server needs its access token:");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      location.reload();
    } else {
      document.getElementById("swagger-ui").textContent = "This server needs an access token to show its API.";
    }
    return;
  }
  SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // the default validator is a remote service
    requestInterceptor: withToken,
  });
}

start();
