"""The forgetting study's evaluation core-hours with the frozen-state store, extrapolated from its
recorded per-evaluation seconds and the per-kind ratios measured by measure.sh (docs/performance.md).
Run from the repository root."""
import json, glob, collections
MC={'arc_easy','arc_challenge','piqa','sciq','winogrande'}; DR={'sciq_support'}
rec=collections.defaultdict(float); cnt=collections.Counter()
for f in glob.glob('docs/results/forgetting/curves/cells/*/result.json'):
    r=json.load(open(f)); fusion=r['settings']['fusion']
    evs=[(fusion, r.get('evaluation',{}))]+[((k.split('=')[1] if k.startswith('fusion=') else fusion), v.get('evaluation',{})) for k,v in (r.get('variants') or {}).items()]
    for vf, ev in evs:
        side='siamese' if vf in ('imsm','mean') else 'vanilla'
        for t,e in ev.items():
            kind='mc' if t in MC else 'drift' if t in DR else 'gen'
            rec[side,kind]+=e['seconds']/3600; cnt[side,kind]+=1
m={n: json.load(open(f'docs/results/perf/frozen_states/{n}.json'))['tasks'] for n in ('imsm_uncached','imsm_build','imsm_cached','none_uncached','none_cached')}
def s(run, tasks): return sum(m[run][t]['seconds'] for t in tasks)
mc=['arc_easy','piqa','sciq']; dr=['sciq_support']
r_mc=s('imsm_cached',mc)/s('imsm_uncached',mc); b_mc=s('imsm_build',mc)/s('imsm_uncached',mc)
r_dr=s('imsm_cached',dr)/s('imsm_uncached',dr); b_dr=s('imsm_build',dr)/s('imsm_uncached',dr)
v_dr=s('none_cached',dr)/s('none_uncached',dr); v_mc=s('none_cached',mc)/s('none_uncached',mc)
print({k: round(v,3) for k,v in dict(r_mc=r_mc,b_mc=b_mc,r_dr=r_dr,b_dr=b_dr,v_dr=v_dr,v_mc=v_mc).items()})
for k in sorted(rec): print(k, round(rec[k],3), cnt[k])
per_task = 21  # siamese evaluations of each MC / drift task in the study; the first builds
new = dict(rec)
new['siamese','mc'] = rec['siamese','mc'] * ((per_task-1)*r_mc + b_mc)/per_task
new['siamese','drift'] = rec['siamese','drift'] * ((per_task-1)*r_dr + b_dr)/per_task
new['vanilla','drift'] = rec['vanilla','drift'] * v_dr
fp = 45 * 6 / 3600  # fingerprints: one per loaded model, ~6 s on one thread
total=sum(rec.values()); newt=sum(new.values())+fp
for k in sorted(new): print(k, round(rec[k],3), '->', round(new[k],3))
print('fingerprints', round(fp,3))
print('total', round(total,2), '->', round(newt,2), 'saving', round(1-newt/total,3))
