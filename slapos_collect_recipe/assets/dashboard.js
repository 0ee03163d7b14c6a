/* slapmonitor dashboard: charts of today's CSVs (header "time,entry"), the
 * machine's and one line per partition, and the partitions' latest consumption.
 * Everything comes from this server, relative to /<secret>/; refreshed every
 * minute. */
(function () {
  "use strict";

  var REFRESH_MS = 60000;
  var state = { graphs: {}, ready: false, refreshes: 0, errors: [] };
  window.slapmonitor = state;

  var FIXED = [
    { id: "cpu", title: "CPU (%)", files: ["system_cpu_percent.csv"], labels: ["busy %"] },
    { id: "load", title: "Load average (1 min)", files: ["system_loadavg.csv"], labels: ["load"] },
    { id: "memory", title: "Memory (GiB)", files: ["system_memory_used.csv", "system_memory_free.csv"],
      labels: ["used", "free"], scale: 1 / 1048576 },
    { id: "network", title: "Network (KiB per sample)", files: ["system_net_in_bytes.csv", "system_net_out_bytes.csv"],
      labels: ["in", "out"] },
    { id: "network-errors", title: "Network errors and drops",
      files: ["system_net_in_errors.csv", "system_net_out_errors.csv",
              "system_net_in_dropped.csv", "system_net_out_dropped.csv"],
      labels: ["in errors", "out errors", "in dropped", "out dropped"] }
  ];

  /* partition_<figure>_<label>.csv (realtime.py): one chart per figure, one line per
   * partition; the CSVs hold KiB for memory, IO and network. */
  var PARTITION = [
    { figure: "cpu_percent", id: "partition-cpu", title: "CPU by partition (%, 100 = one core)" },
    { figure: "memory_used", id: "partition-memory", title: "Memory by partition (MiB)", scale: 1 / 1024 },
    { figure: "io_bytes", id: "partition-io", title: "IO by partition (KiB per sample)" },
    { figure: "net_in_bytes", id: "partition-net-in", title: "Network in by partition (KiB per sample)" },
    { figure: "net_out_bytes", id: "partition-net-out", title: "Network out by partition (KiB per sample)" }
  ];
  var PARTITION_FILE = new RegExp("^partition_(" + PARTITION.map(function (c) { return c.figure; }).join("|") +
                                  ")_(.+)\\.csv$");

  /* The label out of its file name part: percent-encoded (reversible), or, when
   * too long, its first characters, "~" and a hash. */
  function labelOf(part) {
    var hashed = part.indexOf("~");
    var shown = hashed < 0 ? part : part.slice(0, hashed);
    try { shown = decodeURIComponent(shown); } catch (e) { /* not UTF-8: shown as encoded */ }
    return hashed < 0 ? shown : shown + "\u2026" + part.slice(hashed + 1, hashed + 7);
  }

  function text(el, value) { el.textContent = value; return el; }

  function make(tag, cls) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    return el;
  }

  /* Chart groups from the CSV names present at the top of the data dir. */
  function groupsOf(names) {
    var present = {};
    names.forEach(function (n) { present[n] = true; });
    var used = {};
    var groups = [];
    FIXED.forEach(function (g) {
      var files = [], labels = [];
      g.files.forEach(function (f, i) {
        if (present[f]) { files.push(f); labels.push(g.labels[i]); used[f] = true; }
      });
      if (files.length) { groups.push({ id: g.id, title: g.title, files: files, labels: labels, scale: g.scale }); }
    });
    var byFigure = {};
    names.forEach(function (n) {
      var m = PARTITION_FILE.exec(n);
      if (m) {
        used[n] = true;
        (byFigure[m[1]] = byFigure[m[1]] || []).push({ file: n, label: labelOf(m[2]) });
      }
    });
    PARTITION.forEach(function (c) {
      var lines = (byFigure[c.figure] || []).sort(function (a, b) {
        return a.label < b.label ? -1 : a.label > b.label ? 1 : 0;
      });
      if (lines.length) {
        groups.push({ id: c.id, title: c.title, scale: c.scale, partitions: true,
                      files: lines.map(function (l) { return l.file; }),
                      labels: lines.map(function (l) { return l.label; }) });  // dygraph escapes them
      }
    });
    var disks = {};
    names.forEach(function (n) {
      var m = /^system_disk_memory_(used|free)_(.+)\.csv$/.exec(n);
      if (m) {
        used[n] = true;
        (disks[m[2]] = disks[m[2]] || {})[m[1]] = n;
      }
    });
    Object.keys(disks).sort().forEach(function (dev) {
      var files = [], labels = [];
      ["used", "free"].forEach(function (k) {
        if (disks[dev][k]) { files.push(disks[dev][k]); labels.push(k); }
      });
      groups.push({ id: "disk-" + dev, title: "Disk " + dev.replace(/_/g, "/") + " (GiB)",
                    files: files, labels: labels, scale: 1 / 1048576 });
    });
    /* One chart for every temperature sensor, only when the machine has some. */
    var temps = { id: "temperature", title: "Temperatures (\u00b0C)", files: [], labels: [] };
    names.slice().sort().forEach(function (n) {
      var m = /^temperature_(.+)\.csv$/.exec(n);
      if (m) { used[n] = true; temps.files.push(n); temps.labels.push(m[1]); }
    });
    if (temps.files.length) { groups.push(temps); }
    var others = [], benches = [];
    names.forEach(function (n) {
      if (used[n]) { return; }
      var m = /^(system|benchmark)_(.+)\.csv$/.exec(n);
      if (!m) { return; }
      var g = { id: n.replace(/\.csv$/, ""), title: (m[1] === "benchmark" ? "Benchmark " : "") + m[2],
                files: [n], labels: [m[2]] };
      (m[1] === "benchmark" ? benches : others).push(g);
    });
    return groups.concat(others.sort(byId), benches.sort(byId));
  }

  function byId(a, b) { return a.id < b.id ? -1 : a.id > b.id ? 1 : 0; }

  function get(url, json) {
    var headers = json ? { "Accept": "application/json" } : {};
    return fetch(url, { cache: "no-cache", headers: headers }).then(function (r) {
      if (!r.ok) { throw new Error(url + ": HTTP " + r.status); }
      return json ? r.json() : r.text();
    });
  }

  /* "time,entry" lines -> {time string: value}. */
  function parseCsv(body) {
    var out = {};
    body.split(/\r?\n/).forEach(function (line) {
      var comma = line.indexOf(",");
      if (comma < 0) { return; }
      var t = line.slice(0, comma).replace(/"/g, "").trim();
      if (t === "time" || !t) { return; }
      var v = parseFloat(line.slice(comma + 1).replace(/"/g, ""));
      out[t] = isNaN(v) ? null : v;
    });
    return out;
  }

  function toDate(t) {
    var d = new Date(t.replace(" ", "T") + (/Z$|[+-]\d\d:?\d\d$/.test(t) ? "" : "Z"));
    return isNaN(d.getTime()) ? null : d;
  }

  /* Several series merged on their time column, sorted. */
  function merge(series) {
    var rows = {};
    series.forEach(function (s, i) {
      Object.keys(s).forEach(function (t) {
        var row = rows[t];
        if (!row) {
          var d = toDate(t);
          if (!d) { return; }
          row = rows[t] = [d];
          for (var k = 0; k < series.length; k++) { row.push(null); }
        }
        row[i + 1] = s[t];
      });
    });
    return Object.keys(rows).sort().map(function (t) { return rows[t]; });
  }

  /* The chart's box, created in group order before any data arrives. */
  function boxOf(group) {
    var box = document.getElementById("chart-" + group.id);
    if (!box) {
      box = make("div", "chart");
      box.id = "chart-" + group.id;
      box.appendChild(text(make("h3"), group.title));
      box.appendChild(make("div", "plot"));
      // One line per partition: the labels below the plot, where they hide no line.
      if (group.partitions) { box.appendChild(make("div", "legend")); }
      document.getElementById("charts").appendChild(box);
    }
    return box;
  }

  function draw(group) {
    var box = boxOf(group);
    return Promise.all(group.files.map(function (f) {
      return get("server-log/" + encodeURIComponent(f), false).then(parseCsv);
    })).then(function (series) {
      var data = merge(series);
      if (group.scale) {  // the CSVs hold KiB
        data.forEach(function (row) {
          for (var k = 1; k < row.length; k++) { if (row[k] !== null) { row[k] *= group.scale; } }
        });
      }
      var plot = box.querySelector(".plot");
      var graph = state.graphs[group.id];
      if (!data.length) {
        if (!graph) { text(plot, "no data yet today").className = "plot empty"; }
        return;
      }
      if (graph) {  // labels too: a partition may have appeared since
        graph.updateOptions({ file: data, labels: ["time"].concat(group.labels) });
      } else {
        plot.textContent = "";
        plot.className = "plot";
        var options = {
          labels: ["time"].concat(group.labels),
          labelsUTC: true,
          legend: "always",
          connectSeparatedPoints: true,
          includeZero: true,
          labelsKMB: true,
          axes: { y: { axisLabelWidth: 60 } }
        };
        if (group.partitions) {
          options.highlightSeriesOpts = { strokeWidth: 2 };
          options.labelsDiv = box.querySelector(".legend");
        }
        state.graphs[group.id] = new Dygraph(plot, data, options);
      }
    });
  }

  /* null: not measured (never shown as 0). */
  function fmt(value, scale, digits) {
    if (value === null || value === undefined) { return "n/a"; }
    return (value / scale).toFixed(digits);
  }

  function sources(p) {
    return ["cpu/io " + (p.source || "n/a"), "memory " + (p.memory_source || "n/a"),
            "network " + (p.net_source || "n/a")].join(", ");
  }

  function table(report) {
    var body = document.querySelector("#partitions tbody");
    body.textContent = "";
    text(document.getElementById("stamp"), report.date ? ", " + report.date + " " + report.time + " UTC" : "");
    report.partitions.forEach(function (p) {
      var tr = make("tr");
      tr.appendChild(text(make("td"), p.partition));
      [[p.processes, 1, 0], [p.ended, 1, 0], [p.threads, 1, 0], [p.cpu_percent, 1, 1],
       [p.cpu_seconds, 1, 2], [p.cpu_seconds_total, 1, 1], [p.memory_used_bytes, 1048576, 1],
       [p.resident_bytes, 1048576, 1], [p.memory_percent, 1, 2], [p.io_bytes, 1024, 1], [p.io_ops, 1, 0],
       [p.net_in_bytes, 1024, 1], [p.net_out_bytes, 1024, 1], [p.folder_bytes, 1048576, 1]].forEach(function (c) {
        tr.appendChild(text(make("td", "n"), fmt(c[0], c[1], c[2])));
      });
      tr.appendChild(text(make("td", "src"), sources(p)));
      body.appendChild(tr);
    });
    if (!report.partitions.length) {
      var tr = make("tr"), td = make("td", "empty");
      td.colSpan = 16;
      tr.appendChild(text(td, "no partition data yet"));
      body.appendChild(tr);
    }
  }

  function refresh() {
    var status = document.getElementById("status");
    return Promise.all([
      get("api/partitions", true).then(table),
      get("server-log/", true).then(function (listing) {
        var names = listing.entries.filter(function (e) { return e.type === "file"; })
          .map(function (e) { return e.name; });
        return Promise.all(groupsOf(names).map(draw));
      })
    ]).then(function () {
      state.refreshes += 1;
      state.ready = true;
      status.className = "";
      text(status, "updated " + new Date().toISOString().slice(11, 19) + " UTC, every minute");
    }, function (err) {
      state.errors.push(String(err));
      state.ready = true;
      status.className = "error";
      text(status, "update failed: " + err.message);
    });
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
}());
