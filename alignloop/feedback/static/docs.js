// /docs: lists the endpoints of /openapi.json without any third-party code (works offline).
(function () {
  "use strict";
  var root = document.getElementById("endpoints");

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function typeOf(schema, spec) {
    if (!schema) return "";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.anyOf) return schema.anyOf.map(function (s) { return typeOf(s, spec); }).join(" | ");
    if (schema.type === "array") {
      var inner = typeOf(schema.items, spec);
      return (inner.indexOf(" | ") >= 0 ? "(" + inner + ")" : inner) + "[]";
    }
    return schema.type || "object";
  }

  function fields(schema, spec) {
    var props = schema.properties || {};
    var table = el("table", "schema");
    Object.keys(props).forEach(function (name) {
      var p = props[name];
      var tr = el("tr");
      tr.appendChild(el("td", "field", name + ((schema.required || []).indexOf(name) >= 0 ? " *" : "")));
      tr.appendChild(el("td", "type", typeOf(p, spec)));
      tr.appendChild(el("td", "", p.description || ""));
      table.appendChild(tr);
    });
    return table;
  }

  fetch("/openapi.json").then(function (r) { return r.json(); }).then(function (spec) {
    root.textContent = "";
    Object.keys(spec.paths).forEach(function (path) {
      var ops = spec.paths[path];
      Object.keys(ops).forEach(function (method) {
        var op = ops[method];
        var box = el("section", "endpoint");
        var head = el("h3");
        head.appendChild(el("span", "method " + method, method.toUpperCase()));
        head.appendChild(el("code", "", " " + path));
        box.appendChild(head);
        if (op.summary) box.appendChild(el("p", "", op.summary));
        (op.parameters || []).forEach(function (p) {
          box.appendChild(el("p", "param", p.in + " " + p.name + (p.required ? " (required)" : "") + ": " + typeOf(p.schema, spec)));
        });
        var body = op.requestBody && op.requestBody.content;
        if (body) {
          Object.keys(body).forEach(function (ctype) {
            var schema = body[ctype].schema || {};
            if (schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
            box.appendChild(el("p", "param", "body (" + ctype + ")"));
            box.appendChild(fields(schema, spec));
          });
        }
        Object.keys(op.responses || {}).forEach(function (code) {
          var resp = op.responses[code];
          var content = resp.content && resp.content["application/json"];
          box.appendChild(el("p", "param", code + " " + (resp.description || "") +
            (content ? ": " + typeOf(content.schema, spec) : "")));
        });
        root.appendChild(box);
      });
    });
    var schemas = (spec.components && spec.components.schemas) || {};
    root.appendChild(el("h2", "", "Schemas"));
    Object.keys(schemas).forEach(function (name) {
      var box = el("section", "endpoint");
      box.appendChild(el("h3", "", name));
      box.appendChild(fields(schemas[name], spec));
      root.appendChild(box);
    });
  }).catch(function (err) {
    root.textContent = "Could not load /openapi.json: " + err;
  });
})();
