"""dibs against SkyPilot's optimizer, query by query; see run.sh."""
import json
import os
import subprocess
import sys

import sky
from sky import check as sky_check
from sky import clouds
from sky import optimizer
from sky.utils import common

CLOUDS = [clouds.AWS(), clouds.GCP(), clouds.Azure(), clouds.Lambda(), clouds.Nebius(),
          clouds.Hyperbolic(), clouds.Verda()]
BY_NAME = {str(c).lower(): c for c in CLOUDS}


def _enabled(capability, raise_if_no_cloud_access=False):  # monkeypatch, as the harness does
    del capability, raise_if_no_cloud_access
    return list(CLOUDS)


sky_check.get_cached_enabled_clouds_or_refresh = _enabled


def skypilot(resources, num_nodes=1, minimize=common.OptimizeTarget.COST):
    with sky.Dag() as dag:
        task = sky.Task(name='q', run='echo hi', num_nodes=num_nodes)
        task.set_resources(resources)
    optimizer.Optimizer.optimize(dag, minimize=minimize, quiet=True)
    r = task.best_resources
    return {
        'pick': f'{str(r.cloud).lower()}/{r.region} {r.instance_type} x{num_nodes}' + (' spot' if r.use_spot else ''),
        'per_hour': r.get_cost(3600) * num_nodes,
    }


def dibs(flags):
    command = [os.environ['DIBS'], 'place', '--json', '--hours', '1', '--catalog', os.environ['DIBS_CATALOG'],
               '--contracts', os.environ['DIBS_CONTRACTS']] + flags
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        return {'error': out.stderr.strip()}
    report = json.loads(out.stdout)
    if report['status'] != 'awarded':
        return {'error': (report.get('unfilled') or {}).get('reason', 'unfilled')}
    return report['award']


def price_with_skypilot(allocation):
    """What SkyPilot charges for dibs's nodes, or why it refuses them."""
    instance_type = allocation['instance_type'].split('+')[0]
    try:
        resources = sky.Resources(
            infra=f"{allocation['provider']}/{allocation['region']}",
            instance_type=instance_type,
            accelerators={allocation['accelerator']: allocation['gpus_per_node']},
            use_spot=allocation['kind'] == 'spot')
        return resources.get_cost(3600) * allocation['nodes'], None
    except Exception as e:  # pylint: disable=broad-except
        return None, f'{type(e).__name__}: {str(e).splitlines()[0]}'


QUERIES = [
    ('H100:8', sky.Resources(accelerators='H100:8'), 1, None, ['--accelerator', 'H100', '--gpus', '8', '--block', '8']),
    ('A100:8', sky.Resources(accelerators='A100:8'), 1, None, ['--accelerator', 'A100', '--gpus', '8', '--block', '8']),
    ('A100-80GB:8', sky.Resources(accelerators='A100-80GB:8'), 1, None,
     ['--accelerator', 'A100-80GB', '--gpus', '8', '--block', '8']),
    ('H100:8 spot', sky.Resources(accelerators='H100:8', use_spot=True), 1, None,
     ['--accelerator', 'H100', '--gpus', '8', '--block', '8', '--spot', 'only']),
    ('H100:8 x4 nodes', sky.Resources(accelerators='H100:8'), 4, None,
     ['--accelerator', 'H100', '--gpus', '32', '--block', '8', '--same-region']),
    ('H100:1', sky.Resources(accelerators='H100:1'), 1, None, ['--accelerator', 'H100', '--gpus', '1', '--block', '1']),
    ('H200:8', sky.Resources(accelerators='H200:8'), 1, None, ['--accelerator', 'H200', '--gpus', '8', '--block', '8']),
    ('any_of{H100:8,A100-80GB:8}', {sky.Resources(accelerators='H100:8'), sky.Resources(accelerators='A100-80GB:8')}, 1,
     None, ['--accelerator', 'H100,A100-80GB', '--gpus', '8', '--block', '8']),
    ('ordered[aws H100:8, gcp]', [sky.Resources(infra='aws', accelerators='H100:8'),
                                   sky.Resources(infra='gcp', accelerators='H100:8')], 1, None,
     ['--accelerator', 'H100', '--gpus', '8', '--block', '8', '--providers', 'aws,gcp', '--prefer', 'fallback']),
    ('H100:8 infra=gcp', sky.Resources(infra='gcp', accelerators='H100:8'), 1, None,
     ['--accelerator', 'H100', '--gpus', '8', '--block', '8', '--providers', 'gcp']),
    ('H100:8 region us-east-1', sky.Resources(infra='aws/us-east-1', accelerators='H100:8'), 1, None,
     ['--accelerator', 'H100', '--gpus', '8', '--block', '8', '--regions', 'aws/us-east-1']),
    ('H100:8 minimize TIME', sky.Resources(accelerators='H100:8'), 1, common.OptimizeTarget.TIME,
     ['--accelerator', 'H100', '--gpus', '8', '--block', '8', '--objective', 'time']),
]

print(f'sky {sky.__version__}; dibs {os.environ["DIBS"]}')
print(f'{"query":28s} {"SkyPilot pick":52s} {"$/h":>9s}   {"dibs pick":52s} {"$/h":>9s} {"SkyPilot prices dibs":>20s}  verdict')
failures = 0
for label, resources, nodes, minimize, flags in QUERIES:
    try:
        theirs = skypilot(resources, nodes, minimize or common.OptimizeTarget.COST)
    except Exception as e:  # pylint: disable=broad-except
        theirs = {'pick': f'FAILED: {type(e).__name__}', 'per_hour': None}
    ours = dibs(flags)
    if 'error' in ours:
        print(f'{label:28s} {theirs["pick"]:52s} {theirs["per_hour"] or 0:9.4f}   dibs: {ours["error"]}')
        failures += 1
        continue
    pick = ' + '.join(f"{a['provider']}/{a['region']} {a['instance_type']} x{a['nodes']}" + (' spot' if a['kind'] == 'spot' else '')
                      for a in ours['allocations'])
    priced = [price_with_skypilot(a) for a in ours['allocations']]
    refused = [why for _, why in priced if why]
    sky_price = sum(p for p, _ in priced if p is not None)
    ok = not refused and abs(sky_price - ours['cost_per_hour_usd']) < 1e-3
    cheaper_or_same = theirs['per_hour'] is not None and ours['cost_per_hour_usd'] <= theirs['per_hour'] + 1e-6
    verdict = ('same or cheaper' if cheaper_or_same else 'DEARER') + ('' if ok else f' / SkyPilot: {refused or sky_price}')
    if not (ok and cheaper_or_same):
        failures += 1
    print(f'{label:28s} {theirs["pick"]:52s} {theirs["per_hour"] or 0:9.4f}   {pick:52s} {ours["cost_per_hour_usd"]:9.4f} '
          f'{sky_price:20.4f}  {verdict}')
print(f'{len(QUERIES) - failures} of {len(QUERIES)} queries: dibs buys what SkyPilot accepts, at the same price or less')
sys.exit(1 if failures else 0)
