// Warden console: small progressive enhancements. Every page works without this script.
"use strict";

(function () {
  function onReady(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  // Copy buttons: the text of the element a button names.
  function setupCopy() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.getElementById(button.getAttribute("data-copy"));
        if (!source) return;
        var text = source.textContent;
        var done = function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 2000);
        };
        var select = function () {
          var range = document.createRange();
          range.selectNodeContents(source);
          var selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          button.textContent = "Selected: press Ctrl+C";
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, select);
        } else {
          select();
        }
      });
    });
  }

  // Forms that destroy something ask first.
  function setupConfirm() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  }

  // Access policies: which test emails the patterns match, asked of the server's engine.
  function setupPatternEditor() {
    var editor = document.querySelector("[data-pattern-editor]");
    if (!editor) return;
    var patterns = editor.querySelector("textarea[name=patterns]");
    var emails = editor.querySelector("textarea[name=test_emails]");
    var out = editor.querySelector("[data-matches]");
    var url = editor.getAttribute("data-check-url");
    var timer = null;
    var serial = 0;
    function render(data) {
      out.textContent = "";
      var list = document.createElement("ul");
      Object.keys(data.invalid).forEach(function (pattern) {
        var item = document.createElement("li");
        item.className = "miss";
        item.textContent = "pattern " + pattern + ": " + data.invalid[pattern];
        list.appendChild(item);
      });
      data.matches.forEach(function (m) {
        var item = document.createElement("li");
        item.className = m.matched.length ? "hit" : "miss";
        var code = document.createElement("code");
        code.textContent = m.email;
        item.appendChild(code);
        item.appendChild(document.createTextNode(
          m.matched.length ? " matches " + m.matched.join(", ") : " matches no pattern"));
        list.appendChild(item);
      });
      out.appendChild(list);
    }
    function check() {
      var mine = ++serial;
      var query = "?patterns=" + encodeURIComponent(patterns.value) +
        "&emails=" + encodeURIComponent(emails.value);
      fetch(url + query, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data && mine === serial) render(data); })
        .catch(function () { /* the server-rendered list stays */ });
    }
    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(check, 200);
    }
    patterns.addEventListener("input", schedule);
    emails.addEventListener("input", schedule);
  }

  // Rule trees: a structured editor over the JSON textarea (the JSON stays the source).
  function setupRuleEditor() {
    var holder = document.querySelector("[data-rule-editor]");
    if (!holder) return;
    var area = document.querySelector("textarea[name=configuration]");
    var tree = holder.querySelector("[data-rule-tree]");
    var options = JSON.parse(holder.getAttribute("data-options"));
    var kinds = ["match", "and", "or", "not", "allow", "deny", "authenticated"];
    var counter = 0;
    var root = null;

    function fresh(kind) {
      if (kind === "match") return {rule: "match", eval: "==", f1: options.fields[0], f2: ""};
      if (kind === "and" || kind === "or") return {rule: kind, clauses: [fresh("match")]};
      if (kind === "not") return {rule: "not", clause: fresh("match")};
      return {rule: kind};
    }
    function write() {
      area.value = JSON.stringify(root, null, 2);
    }
    function labelled(text, control) {
      var id = "rule-" + (++counter);
      var wrap = document.createElement("span");
      wrap.className = "rule-part";
      var label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = text;
      control.id = id;
      wrap.appendChild(label);
      wrap.appendChild(control);
      return wrap;
    }
    function choice(values, current) {
      var select = document.createElement("select");
      values.forEach(function (v) {
        var option = document.createElement("option");
        option.value = v;
        option.textContent = v;
        if (v === current) option.selected = true;
        select.appendChild(option);
      });
      return select;
    }
    function literal(value) {
      // Numbers, booleans, null and lists are typed as JSON; anything else is a string.
      try {
        var parsed = JSON.parse(value);
        if (typeof parsed !== "string") return parsed;
      } catch (e) { /* a plain string */ }
      return value;
    }
    function shown(value) {
      return typeof value === "string" ? value : JSON.stringify(value);
    }
    function node(data, replace) {
      var box = document.createElement("div");
      box.className = "rule-node";
      var kind = choice(kinds, data.rule);
      kind.addEventListener("change", function () {
        var next = fresh(kind.value);
        replace(next);
        write();
        render();
      });
      box.appendChild(labelled("Rule", kind));
      if (data.rule === "match") {
        var f1 = document.createElement("input");
        f1.value = shown(data.f1);
        f1.setAttribute("list", "rule-fields");
        f1.addEventListener("input", function () { data.f1 = literal(f1.value); write(); });
        var op = choice(options.operators, data.eval);
        op.addEventListener("change", function () { data.eval = op.value; write(); });
        var f2 = document.createElement("input");
        f2.value = shown(data.f2);
        f2.setAttribute("list", "rule-fields");
        f2.addEventListener("input", function () { data.f2 = literal(f2.value); write(); });
        box.appendChild(labelled("Field or value", f1));
        box.appendChild(labelled("Operator", op));
        box.appendChild(labelled("Field or value", f2));
      } else if (data.rule === "and" || data.rule === "or") {
        var list = document.createElement("div");
        list.className = "rule-children";
        data.clauses.forEach(function (child, index) {
          var row = document.createElement("div");
          row.className = "rule-child";
          row.appendChild(node(child, function (next) { data.clauses[index] = next; }));
          var remove = document.createElement("button");
          remove.type = "button";
          remove.className = "secondary";
          remove.textContent = "Remove clause";
          remove.addEventListener("click", function () {
            if (data.clauses.length > 1) { data.clauses.splice(index, 1); write(); render(); }
          });
          row.appendChild(remove);
          list.appendChild(row);
        });
        var add = document.createElement("button");
        add.type = "button";
        add.className = "secondary";
        add.textContent = "Add clause";
        add.addEventListener("click", function () {
          data.clauses.push(fresh("match")); write(); render();
        });
        box.appendChild(list);
        box.appendChild(add);
      } else if (data.rule === "not") {
        var inner = document.createElement("div");
        inner.className = "rule-children";
        inner.appendChild(node(data.clause, function (next) { data.clause = next; }));
        box.appendChild(inner);
      }
      return box;
    }
    function render() {
      tree.textContent = "";
      try {
        root = JSON.parse(area.value);
      } catch (e) {
        var note = document.createElement("p");
        note.className = "hint";
        note.textContent = "The JSON below does not parse; fix it to use the structured editor.";
        tree.appendChild(note);
        return;
      }
      if (!root || typeof root !== "object" || Array.isArray(root) || kinds.indexOf(root.rule) < 0) {
        root = fresh("match");
      }
      tree.appendChild(node(root, function (next) { root = next; }));
    }
    var datalist = document.createElement("datalist");
    datalist.id = "rule-fields";
    options.fields.forEach(function (f) {
      var option = document.createElement("option");
      option.value = f;
      datalist.appendChild(option);
    });
    holder.appendChild(datalist);
    holder.hidden = false;
    area.addEventListener("change", render);
    render();
  }

  onReady(function () {
    setupCopy();
    setupConfirm();
    setupPatternEditor();
    setupRuleEditor();
  });
})();
