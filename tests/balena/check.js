// Validates the balena project with balena's own library (@balena/compose, the code
// balena-cli's push and deploy run before anything reaches a builder):
//   1. parse.normalize: docker-compose.yml against balena's compose schema and rules
//      (named volumes only, builds inside the project, supported fields);
//   2. multibuild.splitBuildStream + performResolution: the project as a tar, split per
//      service and resolved for ARCH/DEVICE_TYPE, which expands Dockerfile.template's
//      %%BALENA_ARCH%%; each resolved Dockerfile is written to OUT_DIR for the linters;
//   3. the balena.yml contract fields balena reads (type, device types, variables).
// Usage: node check.js PROJECT_DIR ARCH DEVICE_TYPE OUT_DIR  (prints one JSON report)
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const yaml = require('js-yaml');
const tar = require('tar-stream');
const { parse, multibuild } = require('@balena/compose');

async function projectTar(root) {
  // What balena push uploads: the tracked files (it honours .dockerignore; so do we).
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard'], { cwd: root })
    .toString().split('\n').filter(Boolean).filter((f) => fs.existsSync(path.join(root, f)));
  const pack = tar.pack();
  for (const file of files) {
    const st = fs.statSync(path.join(root, file));
    if (!st.isFile()) continue;
    pack.entry({ name: file, mode: st.mode }, fs.readFileSync(path.join(root, file)));
  }
  pack.finalize();
  return pack;
}

async function main() {
  const [root, arch, deviceType, outDir] = process.argv.slice(2);
  const raw = yaml.load(fs.readFileSync(path.join(root, 'docker-compose.yml'), 'utf8'));
  const composition = parse.normalize(raw);
  const images = parse.parse(composition);
  const tasks = await multibuild.splitBuildStream(composition, await projectTar(root));
  const resolved = multibuild.performResolution(tasks, arch, deviceType, {});
  const services = {};
  for (const task of resolved) {
    // The resolved build context is a lazy tar stream: read it through, as the builder
    // would, and keep the names it holds.
    const entries = [];
    const extract = tar.extract();
    extract.on('entry', (header, stream, next) => { entries.push(header.name); stream.resume(); stream.on('end', next); });
    const finished = new Promise((resolve, reject) => { extract.on('finish', resolve); extract.on('error', reject); });
    task.buildStream.pipe(extract);
    await finished;
    await task.resolvedPromise;
    const file = path.join(outDir, `${task.serviceName}.Dockerfile`);
    fs.writeFileSync(file, task.dockerfile || '');
    services[task.serviceName] = {
      context: task.context, dockerfilePath: task.dockerfilePath, projectType: task.projectType,
      resolvedDockerfile: file, contextFiles: entries.length,
    };
  }
  const balenaYml = yaml.load(fs.readFileSync(path.join(root, 'balena.yml'), 'utf8'));
  console.log(JSON.stringify({
    services, images: images.map((i) => i.serviceName), volumes: Object.keys(composition.volumes || {}),
    composition, balenaYml,
  }));
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
