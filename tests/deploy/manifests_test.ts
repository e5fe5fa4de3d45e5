/**
 * The deployment files, validated offline (no cluster runs here): every Kubernetes manifest against the
 * Kubernetes schemas (npm `kubernetes-models`), the production overlay's patches merged into the base and
 * validated again, the settings that keep the relay safe (non-root, read-only root, no capabilities, probes,
 * a grace longer than the drain, the token where the binary may read it, egress denied to private ranges), and
 * the docker compose example.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";

const ROOT = new URL("../../deploy/", import.meta.url);
type Doc = Record<string, unknown> & { kind: string; apiVersion: string; metadata: { name: string } };

const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  "apps/v1/Deployment": Deployment,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "v1/Namespace": Namespace,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "v1/Secret": Secret,
  "v1/Service": Service,
};

async function readYaml(path: string): Promise<Doc[]> {
  const text = await Deno.readTextFile(new URL(path, ROOT));
  return parseAllDocuments(text).map((doc) => {
    assert.equal(doc.errors.length, 0, `${path}: ${doc.errors.join("; ")}`);
    return doc.toJSON() as Doc;
  });
}

function validate(doc: Doc, where: string): void {
  const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
  assert.ok(Model !== undefined, `${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
  try {
    new Model(doc as never).validate();
  } catch (err) {
    assert.fail(`${where}: ${doc.kind} ${doc.metadata?.name} is not valid: ${err}`);
  }
}

/** A small strategic merge: objects merge, lists of named items merge by name, other values replace. */
function merge(base: unknown, patch: unknown): unknown {
  if (Array.isArray(base) && Array.isArray(patch)) {
    const named = patch.every((item) => typeof item === "object" && item !== null && "name" in item);
    if (!named) return patch;
    const out = base.map((item) => {
      const match = patch.find((p) => (p as { name: string }).name === (item as { name: string }).name);
      return match === undefined ? item : merge(item, match);
    });
    for (const item of patch) {
      if (!base.some((b) => (b as { name: string }).name === (item as { name: string }).name)) out.push(item);
    }
    return out;
  }
  if (typeof base === "object" && base !== null && typeof patch === "object" && patch !== null) {
    const out: Record<string, unknown> = { ...base as Record<string, unknown> };
    for (const [key, value] of Object.entries(patch)) out[key] = merge(out[key], value);
    return out;
  }
  return patch;
}

async function kustomization(dir: string): Promise<{ resources?: string[]; patches?: { path: string }[] }> {
  const [doc] = await readYaml(`${dir}/kustomization.yaml`);
  return doc as { resources?: string[]; patches?: { path: string }[] };
}

async function baseDocs(): Promise<Doc[]> {
  const base = await kustomization("kubernetes/base");
  const docs: Doc[] = [];
  for (const resource of base.resources ?? []) docs.push(...await readYaml(`kubernetes/base/${resource}`));
  return docs;
}

Deno.test({
  name: "kubernetes base: every manifest is valid against the schemas",
  permissions: { read: true, env: ["LOG_TOKENS", "LOG_STREAM"] },
}, async () => {
  const docs = await baseDocs();
  assert.deepEqual(
    docs.map((d) => d.kind).sort(),
    ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service"],
  );
  for (const doc of docs) validate(doc, "base");
});

Deno.test({
  name: "kubernetes production overlay: patches merged into the base stay valid",
  permissions: { read: true, env: ["LOG_TOKENS", "LOG_STREAM"] },
}, async () => {
  const overlay = await kustomization("kubernetes/overlays/production");
  assert.ok(overlay.resources?.includes("../../base"));
  const docs = await baseDocs();
  for (const resource of (overlay.resources ?? []).filter((r) => !r.startsWith(".."))) {
    for (const doc of await readYaml(`kubernetes/overlays/production/${resource}`)) validate(doc, resource);
  }
  for (const { path } of overlay.patches ?? []) {
    const [patch] = await readYaml(`kubernetes/overlays/production/${path}`);
    const target = docs.find((d) => d.kind === patch!.kind && d.metadata.name === patch!.metadata.name);
    assert.ok(target !== undefined, `${path} patches nothing in the base`);
    validate(merge(target, patch) as Doc, path);
  }
});

Deno.test({
  name: "kubernetes redis component: valid, hardened, reachable from the relays only, and wired into them",
  permissions: { read: true, env: ["LOG_TOKENS", "LOG_STREAM"] },
}, async () => {
  const dir = "kubernetes/components/redis";
  const [component] = await readYaml(`${dir}/kustomization.yaml`) as unknown as [
    { kind: string; resources: string[]; patches: { path: string }[] },
  ];
  assert.equal(component.kind, "Component");
  const docs: Doc[] = [];
  for (const resource of component.resources) docs.push(...await readYaml(`${dir}/${resource}`));
  for (const doc of docs) validate(doc, `components/redis/${doc.kind}`);
  assert.deepEqual(docs.map((d) => d.kind).sort(), [
    "Deployment",
    "NetworkPolicy",
    "NetworkPolicy",
    "Service",
  ]);

  // deno-lint-ignore no-explicit-any
  const redis = docs.find((d) => d.kind === "Deployment") as any;
  const container = redis.spec.template.spec.containers[0];
  assert.equal(redis.spec.template.spec.securityContext.runAsNonRoot, true);
  assert.equal(container.securityContext.readOnlyRootFilesystem, true);
  assert.deepEqual(container.securityContext.capabilities.drop, ["ALL"]);
  assert.ok(container.args.includes("noeviction"), "leases must never be evicted");
  // deno-lint-ignore no-explicit-any
  const service = docs.find((d) => d.kind === "Service") as any;

  // The relays may reach Redis on its port (policies add up), and Redis takes nothing from anyone else.
  // deno-lint-ignore no-explicit-any
  const policies = docs.filter((d) => d.kind === "NetworkPolicy") as any[];
  const relayLabel = { "app.kubernetes.io/name": "aero-net-proxy" };
  const redisLabel = redis.spec.template.metadata.labels["app.kubernetes.io/name"];
  const intoRedis = policies.find((p) =>
    p.spec.podSelector.matchLabels["app.kubernetes.io/name"] === redisLabel
  );
  assert.deepEqual(intoRedis.spec.ingress.map((r: { from: unknown }) => r.from), [[{
    podSelector: { matchLabels: relayLabel },
  }]]);
  assert.deepEqual(intoRedis.spec.egress, []);
  const fromRelay = policies.find((p) => p !== intoRedis);
  assert.deepEqual(fromRelay.spec.podSelector.matchLabels, relayLabel);
  assert.equal(fromRelay.spec.egress[0].to[0].podSelector.matchLabels["app.kubernetes.io/name"], redisLabel);
  assert.equal(fromRelay.spec.egress[0].ports[0].port, service.spec.ports[0].port);

  // The patch points the relay Deployment of the base at the Service, and stays valid merged into it.
  const [patch] = await readYaml(`${dir}/${component.patches[0]!.path}`);
  const base = (await baseDocs()).find((d) => d.kind === "Deployment")!;
  const merged = merge(base, patch) as Doc;
  validate(merged, "components/redis patch");
  // deno-lint-ignore no-explicit-any
  const env = (merged as any).spec.template.spec.containers[0].env as { name: string; value: string }[];
  const url = env.find((e) => e.name === "AERO_PROXY_REDIS_URL")?.value;
  assert.equal(url, `redis://${service.metadata.name}:${service.spec.ports[0].port}`);
  const overlay = await readYaml("kubernetes/overlays/production/kustomization.yaml");
  assert.ok((overlay[0] as { components?: string[] }).components?.includes("../../components/redis"));
});

Deno.test({
  name: "kubernetes deployment: hardened, probed, drained, token readable",
  permissions: { read: true, env: ["LOG_TOKENS", "LOG_STREAM"] },
}, async () => {
  const deployment = (await baseDocs()).find((d) => d.kind === "Deployment") as unknown as {
    // Parsed YAML, checked field by field below (the schemas validated its shape already).
    // deno-lint-ignore no-explicit-any
    spec: { template: { spec: Record<string, any> } };
  };
  const pod = deployment.spec.template.spec;
  const container = pod.containers[0];
  assert.equal(pod.securityContext.runAsNonRoot, true);
  // The Dockerfile's user.
  const dockerfile = await Deno.readTextFile(new URL("../Dockerfile", ROOT));
  assert.match(dockerfile, new RegExp(`--uid ${pod.securityContext.runAsUser} `));
  assert.equal(container.securityContext.readOnlyRootFilesystem, true);
  assert.equal(container.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(container.securityContext.capabilities.drop, ["ALL"]);
  assert.equal(container.livenessProbe.httpGet.path, "/healthz");
  assert.equal(container.readinessProbe.httpGet.path, "/readyz");
  assert.ok(container.resources.requests.cpu && container.resources.limits.memory);
  const env = Object.fromEntries(
    container.env.map((e: { name: string; value: string }) => [e.name, e.value]),
  );
  const graceS = Number(env.AERO_PROXY_SHUTDOWN_GRACE_MS) / 1000;
  const preStopS = Number(container.lifecycle.preStop.exec.command.at(-1));
  assert.ok(
    pod.terminationGracePeriodSeconds > graceS + preStopS,
    "the kubelet would kill sessions mid-drain",
  );
  // The compiled binary may read /run/secrets only (deno task compile): the token must be mounted there.
  assert.match(env.AERO_PROXY_AUTH_TOKEN_FILE, /^\/run\/secrets\//);
  const denoJson = JSON.parse(await Deno.readTextFile(new URL("../deno.json", ROOT)));
  assert.match(denoJson.tasks.compile, /--allow-read=\/run\/secrets,/);
  const mount = container.volumeMounts.find((m: { name: string }) => m.name === "token");
  assert.ok(env.AERO_PROXY_AUTH_TOKEN_FILE.startsWith(`${mount.mountPath}/`) && mount.readOnly);
});

Deno.test({
  name: "kubernetes network policy: egress to private ranges denied, DNS allowed",
  permissions: { read: true, env: ["LOG_TOKENS", "LOG_STREAM"] },
}, async () => {
  const policy = (await baseDocs()).find((d) => d.kind === "NetworkPolicy") as unknown as {
    spec: {
      egress: { to: { ipBlock?: { cidr: string; except: string[] } }[]; ports?: { port: number }[] }[];
    };
  };
  const blocks = policy.spec.egress.flatMap((rule) => rule.to).map((to) => to.ipBlock).filter((b) =>
    b !== undefined
  );
  const v4 = blocks.find((b) => b!.cidr === "0.0.0.0/0")!;
  for (
    const range of [
      "10.0.0.0/8",
      "172.16.0.0/12",
      "192.168.0.0/16",
      "169.254.0.0/16",
      "127.0.0.0/8",
      "100.64.0.0/10",
    ]
  ) {
    assert.ok(v4.except.includes(range), `egress to ${range} is not denied`);
  }
  const v6 = blocks.find((b) => b!.cidr === "::/0")!;
  for (const range of ["fc00::/7", "fe80::/10", "::1/128"]) assert.ok(v6.except.includes(range));
  assert.ok(policy.spec.egress.some((rule) => rule.ports?.some((p) => p.port === 53)), "no DNS egress");
});

Deno.test(
  {
    name: "docker compose: two hardened replicas behind Caddy, sharing limits through Redis",
    permissions: { read: true, env: ["LOG_TOKENS", "LOG_STREAM"] },
  },
  async () => {
    const [compose] = await readYaml("compose/docker-compose.yml") as unknown as [
      // Parsed YAML, checked field by field below.
      // deno-lint-ignore no-explicit-any
      { services: Record<string, any> },
    ];
    const relay = compose.services.relay;
    assert.equal(relay.deploy.replicas, 2);
    assert.equal(relay.read_only, true);
    assert.deepEqual(relay.cap_drop, ["ALL"]);
    assert.match(relay.environment.AERO_PROXY_AUTH_TOKEN_FILE, /^\/run\/secrets\//);
    assert.ok(compose.services.caddy.volumes.some((v: string) => v.startsWith("./Caddyfile:")));
    const caddyfile = await Deno.readTextFile(new URL("compose/Caddyfile", ROOT));
    assert.match(caddyfile, /reverse_proxy/);
    assert.match(caddyfile, /dynamic a relay 8080/);
    // The replicas share their limits through the Redis service, at the one private address their sandbox allows.
    const redis = compose.services.redis;
    const url = new URL(relay.environment.AERO_PROXY_REDIS_URL);
    assert.equal(url.hostname, "redis");
    assert.ok(redis.command.includes("noeviction") && redis.read_only === true);
    assert.equal(relay.build.args.SANDBOX_EXCEPT, redis.networks.relay.ipv4_address);
  },
);
