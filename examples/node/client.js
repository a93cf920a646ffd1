#!/usr/bin/env node
// A small campaign-engine client of the cvm-rl decision service, in Node with @grpc/grpc-js.
//
//   node client.js [ADDRESS] [--token TOKEN] [--show-camelcase-pitfall]
//
// ADDRESS defaults to $CVM_ADDRESS, then 127.0.0.1:50051. The bearer token (servers started
// with `cvm serve --token-file`) comes from --token or, better (argv is visible to `ps`), from
// $CVM_AUTH_TOKEN. The service protos are read from the repository's proto/ directory
// ($CVM_PROTO_DIR overrides it).
//
// It walks through the contract as a campaign engine would use it: GetPolicyInfo, one Decide
// with a client-generated event id (and its replay), a small DecideBatch, ReportOutcome and
// ReportOutcomes, then two requests the server must refuse with INVALID_ARGUMENT. It prints
// one JSON object to stdout with what it observed, and exits 1 when anything differs from the
// contract (the JSON then has "ok": false and the list of failures), 2 on bad usage.
//
// --show-camelcase-pitfall loads the protos with proto-loader's default options instead and
// shows what happens to snake_case keys then (see loadService below).
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_DIR = process.env.CVM_PROTO_DIR || path.resolve(__dirname, "..", "..", "proto");
const PROTO_FILE = "cvm/v1/decision.proto";
const CALL_TIMEOUT_MS = 10_000;
const BATCH_CUSTOMERS = 3; // keep batches small: answers stay far below the 4 MiB receive limit

// Loader options for this service. keepCase is the one that matters: by default proto-loader
// renames every field to camelCase (eventId, customerId, nFeatures), and protobufjs builds the
// message from the keys it knows, silently ignoring any other. A request written with the
// proto's own names (event_id) then loses those fields without an error: a lost event_id makes
// the server generate its own id, so the outcome report and any retry no longer match the
// decision. With keepCase the keys are exactly the proto's snake_case names, both ways.
const LOADER_OPTIONS = {
  keepCase: true, // event_id, customer_id, n_features: the names in decision.proto
  longs: String, // uint64 (ActivationRef.seq) as a decimal string, never rounded to a double
  enums: String, // "DECISION_SOURCE_POLICY" rather than 1
  defaults: true, // unset fields come back with their proto3 defaults (0, "", false, [])
  oneofs: true, // a oneof's set member is named, e.g. features: "dense"
  includeDirs: [PROTO_DIR], // google/protobuf/timestamp.proto is built into protobufjs
};

function loadService(options) {
  const definition = protoLoader.loadSync(PROTO_FILE, options);
  return grpc.loadPackageDefinition(definition).cvm.v1.DecisionService;
}

// ---------------------------------------------------------------------------- arguments
function parseArgs(argv) {
  const args = {
    address: process.env.CVM_ADDRESS || "127.0.0.1:50051",
    token: process.env.CVM_AUTH_TOKEN || null,
    pitfall: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--token") {
      if (i + 1 >= argv.length) usage("--token needs a value");
      args.token = argv[++i];
    } else if (arg === "--show-camelcase-pitfall") {
      args.pitfall = true;
    } else if (arg === "-h" || arg === "--help") {
      process.stdout.write(
        "usage: node client.js [ADDRESS] [--token TOKEN] [--show-camelcase-pitfall]\n",
      );
      process.exit(0);
    } else if (arg.startsWith("-")) {
      usage(`unknown option ${arg}`);
    } else {
      args.address = arg;
    }
  }
  return args;
}

function usage(message) {
  process.stderr.write(`client.js: ${message}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------- calls
// Promise wrapper around a unary method: every call gets a deadline and the auth metadata.
// The token goes in per-call metadata: grpc-js refuses to compose call credentials with an
// insecure channel, and a server with --token-file but no TLS is a plaintext one.
function caller(client, token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return (method, request) =>
    new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
      client[method](request, metadata, { deadline }, (err, response) =>
        err ? reject(err) : resolve(response),
      );
    });
}

// The status of a call that must fail: its code name and message (or "OK" if it succeeded).
async function statusOf(promise) {
  try {
    await promise;
    return { code: "OK", details: "" };
  } catch (err) {
    if (err.code === undefined) throw err; // not a gRPC status: a bug here, not an answer
    return { code: grpc.status[err.code], details: err.details };
  }
}

function waitForReady(client) {
  return new Promise((resolve, reject) =>
    client.waitForReady(new Date(Date.now() + CALL_TIMEOUT_MS), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
}

// Time-ordered event ids, 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits
// (the UUIDv7 layout, as the Python client sends). Ids that grow with time keep the server's
// event-id index append-mostly. Chosen here, not by the server, so that a retry is a replay.
function newEventId() {
  const millis = Date.now().toString(16).padStart(12, "0");
  return millis + crypto.randomBytes(10).toString("hex");
}

// ---------------------------------------------------------------------------- features
// A plausible customer from GetPolicyInfo's feature metadata alone: every value inside its
// [min, max], flags set, exactly one member of each one-hot group at 1, sin/cos of one
// calendar week. `variant` makes different customers.
function customerFeatures(features, variant) {
  const week = (7 * variant + 10) % 52;
  const angle = (2 * Math.PI * week) / 52;
  const hotMember = new Map(); // one-hot group -> index of the member set to 1
  return features.map((f, i) => {
    const clamp = (x) => Math.min(f.max, Math.max(f.min, x));
    const encoding = f.encoding.split(",")[0].trim();
    switch (encoding) {
      case "flag":
        return clamp(1);
      case "one-hot": {
        const members = features.filter((g) => g.group === f.group).map((g) => g.name);
        if (!hotMember.has(f.group)) hotMember.set(f.group, members[variant % members.length]);
        return hotMember.get(f.group) === f.name ? 1 : 0;
      }
      case "sin":
        return clamp(Math.sin(angle));
      case "cos":
        return clamp(Math.cos(angle));
      case "fraction":
        return clamp(0.25 + 0.1 * variant);
      case "amount":
        return clamp(f.min + 40 + 15 * variant);
      default: // counts and anything else: a small value above the minimum
        return clamp(f.min + 1 + ((i + variant) % 4));
    }
  });
}

// ---------------------------------------------------------------------------- the walk
async function run(args) {
  const DecisionService = loadService(LOADER_OPTIONS);
  const client = new DecisionService(args.address, grpc.credentials.createInsecure());
  const call = caller(client, args.token);
  const failures = [];
  const expect = (ok, message) => {
    if (!ok) failures.push(message);
  };
  try {
    await waitForReady(client);

    // What is being served: the catalog and the feature schema with each feature's range.
    const info = await call("GetPolicyInfo", {});
    const actionNames = info.actions.map((a) => a.name);
    const nFeatures = info.feature_names.length;
    expect(nFeatures > 0, "GetPolicyInfo: no feature_names");
    expect(
      info.features.length === nFeatures,
      "GetPolicyInfo: features and feature_names differ in length",
    );
    info.features.forEach((f, i) =>
      expect(f.name === info.feature_names[i], `GetPolicyInfo: features[${i}].name is ${f.name}`),
    );
    expect(actionNames[0] === "no_contact", `GetPolicyInfo: actions[0] is ${actionNames[0]}`);

    // One decision with our own event id, returning the whole distribution.
    const eventId = newEventId();
    const values = customerFeatures(info.features, 0);
    const decideRequest = {
      event_id: eventId,
      customer_id: "node-customer-0",
      dense: { values },
      return_probabilities: true,
    };
    const decided = await call("Decide", decideRequest);
    const d = decided.decision;
    const chosen = info.actions[d.action_index];
    expect(
      d.event_id === eventId,
      `Decide: event_id ${d.event_id} is not the one sent (${eventId})`,
    );
    expect(d.customer_id === "node-customer-0", `Decide: customer_id echoed as ${d.customer_id}`);
    expect(chosen !== undefined, `Decide: action_index ${d.action_index} outside the catalog`);
    expect(
      chosen &&
        chosen.action.offer_id === d.action.offer_id &&
        chosen.action.channel === d.action.channel,
      "Decide: action differs from the catalog entry at action_index",
    );
    expect(
      d.propensity > 0 && d.propensity <= 1,
      `Decide: propensity ${d.propensity} outside (0, 1]`,
    );
    expect(
      d.probabilities.length === actionNames.length,
      "Decide: probabilities not one per action",
    );
    const total = d.probabilities.reduce((a, b) => a + b, 0);
    expect(Math.abs(total - 1) < 1e-6, `Decide: probabilities sum to ${total}`);
    expect(
      Math.abs(d.probabilities[d.action_index] - d.propensity) < 1e-9,
      "Decide: propensity is not the chosen action's probability",
    );
    expect(
      d.source === "DECISION_SOURCE_POLICY" || d.source === "DECISION_SOURCE_BASELINE",
      `Decide: source ${d.source}`,
    );

    // The same request again is a replay: the first decision comes back, nothing new is made.
    const replay = (await call("Decide", decideRequest)).decision;
    expect(
      replay.event_id === eventId &&
        replay.action_index === d.action_index &&
        replay.propensity === d.propensity,
      "Decide: the replay of an event id did not return the first decision",
    );

    // A few customers at once: a row-major matrix of BATCH_CUSTOMERS x nFeatures.
    const batchIds = Array.from({ length: BATCH_CUSTOMERS }, newEventId);
    const customerIds = batchIds.map((_, i) => `node-customer-${i + 1}`);
    const matrix = customerIds.flatMap((_, i) => customerFeatures(info.features, i + 1));
    const batch = await call("DecideBatch", {
      event_ids: batchIds,
      customer_ids: customerIds,
      features: matrix,
      n_features: nFeatures,
    });
    expect(
      batch.decisions.length === BATCH_CUSTOMERS,
      `DecideBatch: ${batch.decisions.length} decisions`,
    );
    batch.decisions.forEach((row, i) => {
      expect(row.event_id === batchIds[i], `DecideBatch: row ${i} event_id ${row.event_id}`);
      expect(
        row.customer_id === customerIds[i],
        `DecideBatch: row ${i} customer_id ${row.customer_id}`,
      );
      expect(
        row.propensity > 0 && row.propensity <= 1,
        `DecideBatch: row ${i} propensity ${row.propensity}`,
      );
      expect(
        row.action_index < actionNames.length,
        `DecideBatch: row ${i} action_index ${row.action_index}`,
      );
    });

    // Outcomes. `reward` is proto3 `optional`: it must be set (0 is a real reward). A resend
    // of the same outcome is a no-op reported as a duplicate.
    const outcome = { event_id: eventId, reward: 12.5, purchase: true, spend: 40 };
    const reported = await call("ReportOutcome", { outcome });
    const resent = await call("ReportOutcome", { outcome });
    expect(reported.duplicate === false, "ReportOutcome: the first report was a duplicate");
    expect(resent.duplicate === true, "ReportOutcome: the resend was not a duplicate");
    const batchOutcomes = await call("ReportOutcomes", {
      outcomes: batchIds.map((id, i) => ({
        event_id: id,
        reward: i === 0 ? 0 : -1.5,
        purchase: false,
      })),
    });
    expect(
      batchOutcomes.recorded === BATCH_CUSTOMERS,
      `ReportOutcomes: recorded ${batchOutcomes.recorded}`,
    );
    expect(
      batchOutcomes.duplicates === 0,
      `ReportOutcomes: duplicates ${batchOutcomes.duplicates}`,
    );

    // Requests the server must refuse, each with a message naming what is wrong.
    const wrongCount = await statusOf(
      call("Decide", {
        event_id: newEventId(),
        customer_id: "node-bad",
        dense: { values: values.slice(1) },
      }),
    );
    const tight = info.features.reduce((a, f) => (f.max - f.min < a.max - a.min ? f : a));
    const outOfRange = values.slice();
    outOfRange[info.features.indexOf(tight)] = tight.max + 1;
    const outside = await statusOf(
      call("Decide", {
        event_id: newEventId(),
        customer_id: "node-bad",
        dense: { values: outOfRange },
      }),
    );
    const wrongWidth = await statusOf(
      call("DecideBatch", {
        customer_ids: ["node-bad"],
        features: values.slice(1),
        n_features: nFeatures - 1,
      }),
    );
    for (const [name, s] of [
      ["wrong feature count", wrongCount],
      ["feature out of range", outside],
      ["batch of the wrong width", wrongWidth],
    ]) {
      expect(
        s.code === "INVALID_ARGUMENT",
        `${name}: ${s.code} (${s.details}), expected INVALID_ARGUMENT`,
      );
    }
    expect(
      outside.details.includes(tight.name),
      `feature out of range: message does not name ${tight.name}`,
    );

    return {
      ok: failures.length === 0,
      failures,
      address: args.address,
      loader_options: {
        keepCase: true,
        longs: "String",
        enums: "String",
        defaults: true,
        oneofs: true,
      },
      policy: {
        model_id: info.model.model_id,
        model_version: info.model.model_version,
        exploration: info.exploration.mode,
        learning_mode: info.exploration.learning_mode,
        activation_seq: info.active.seq,
        action_names: actionNames,
        feature_names: info.feature_names,
      },
      decide: {
        event_id_sent: eventId,
        event_id: d.event_id,
        customer_id: d.customer_id,
        action: chosen ? chosen.name : null,
        offer_id: d.action.offer_id,
        channel: d.action.channel,
        action_index: d.action_index,
        propensity: d.propensity,
        explored: d.explored,
        source: d.source,
        model_id: decided.model.model_id,
        replay_same_decision: replay.action_index === d.action_index && replay.event_id === eventId,
      },
      decide_batch: {
        event_ids_sent: batchIds,
        decisions: batch.decisions.map((row) => ({
          event_id: row.event_id,
          customer_id: row.customer_id,
          action: actionNames[row.action_index] ?? null,
          propensity: row.propensity,
        })),
      },
      report_outcome: { duplicate: reported.duplicate, resend_duplicate: resent.duplicate },
      report_outcomes: { recorded: batchOutcomes.recorded, duplicates: batchOutcomes.duplicates },
      bad_requests: {
        wrong_feature_count: wrongCount,
        feature_out_of_range: { feature: tight.name, value: tight.max + 1, ...outside },
        batch_wrong_width: wrongWidth,
      },
    };
  } finally {
    client.close();
  }
}

// With proto-loader's defaults (no keepCase), the generated message types only know the
// camelCase names. Two requests show what that does to snake_case keys:
//  * everything snake_case: every key but `dense` is dropped, so the server sees no
//    customer_id and refuses the request (loud, at least);
//  * camelCase except a snake_case event_id: the id is dropped silently, the call succeeds,
//    and the decision carries an id the server generated. Answers come back camelCase too.
async function showCamelCasePitfall(args) {
  const info = await (async () => {
    const Proper = loadService(LOADER_OPTIONS);
    const proper = new Proper(args.address, grpc.credentials.createInsecure());
    try {
      await waitForReady(proper);
      return await caller(proper, args.token)("GetPolicyInfo", {});
    } finally {
      proper.close();
    }
  })();
  const values = customerFeatures(info.features, 0);

  const DefaultService = loadService({ includeDirs: [PROTO_DIR] }); // the defaults: camelCase
  const client = new DefaultService(args.address, grpc.credentials.createInsecure());
  const call = caller(client, args.token);
  try {
    const allSnake = await statusOf(
      call("Decide", { event_id: newEventId(), customer_id: "node-pitfall", dense: { values } }),
    );
    const sentId = newEventId();
    const response = await call("Decide", {
      event_id: sentId,
      customerId: "node-pitfall",
      dense: { values },
    });
    const returnedId = response.decision.eventId;
    const summary = {
      ok:
        allSnake.code === "INVALID_ARGUMENT" &&
        returnedId !== sentId &&
        response.decision.event_id === undefined,
      loader_options: "proto-loader defaults (keepCase: false)",
      all_snake_case_request: allSnake,
      snake_case_event_id: {
        event_id_sent: sentId,
        event_id_returned: returnedId,
        dropped: returnedId !== sentId,
        response_decision_keys: Object.keys(response.decision).sort(),
      },
    };
    return summary;
  } finally {
    client.close();
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let summary;
  try {
    summary = args.pitfall ? await showCamelCasePitfall(args) : await run(args);
  } catch (err) {
    // An RPC that should have succeeded did not (unreachable server, wrong token, ...).
    const code = err.code === undefined ? null : grpc.status[err.code];
    summary = {
      ok: false,
      failures: [`${code || "error"}: ${err.details || err.message}`],
      address: args.address,
    };
  }
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  process.exitCode = summary.ok ? 0 : 1;
}

main();
