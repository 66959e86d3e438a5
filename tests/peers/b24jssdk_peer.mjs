// Runs the vendor's JS SDK (@bitrix24/b24jssdk), unmodified, against a webhook URL (argv[2]):
// v2 callMethod, callListMethod, callBatch and v3 call, callList, batch. Prints one JSON object
// with what each returned; tests/test_peer_b24jssdk.py checks it against the portal.
import { B24Hook } from '@bitrix24/b24jssdk'

const b24 = B24Hook.fromWebhookUrl(process.argv[2])
const out = {}

function data (response, what) {
  if (!response.isSuccess) {
    throw new Error(`${what}: ${response.getErrorMessages().join('; ')}`)
  }
  return response.getData()
}

// --- REST v2 ---
out.v2_add = data(await b24.callMethod('crm.lead.add', { fields: { TITLE: 'JS SDK lead' } }), 'callMethod').result
out.v2_list = data(await b24.callListMethod('crm.lead.list', { select: ['ID', 'TITLE'] }), 'callListMethod')
const batch = data(await b24.callBatch({
  added: { method: 'crm.lead.add', params: { fields: { TITLE: 'JS SDK batch lead' } } },
  fetched: { method: 'crm.lead.get', params: { id: '$result[added]' } }
}, true), 'callBatch')
out.v2_batch = { added: batch.added, fetched_title: batch.fetched.TITLE }

// --- REST 3.0 ---
const task = { title: 'JS SDK task', creatorId: 1, responsibleId: 1 }
out.v3_call = data(await b24.actions.v3.call.make({ method: 'tasks.task.add', params: { fields: task } }), 'v3 call').result
const listed = data(await b24.actions.v3.callList.make({
  method: 'tasks.task.list',
  params: { select: ['id', 'title'], filter: [] },
  idKey: 'id',
  customKeyForResult: 'items',
  limit: 2
}), 'v3 callList')
out.v3_list = listed
const v3batch = data(await b24.actions.v3.batch.make({
  calls: [
    { method: 'tasks.task.get', params: { id: out.v3_call.item.id, select: ['id', 'title'] } },
    { method: 'tasks.task.add', params: { fields: { ...task, title: 'JS SDK v3 batch task' } } }
  ],
  options: { isHaltOnError: true }
}), 'v3 batch')
out.v3_batch = v3batch

process.stdout.write(JSON.stringify(out) + '\n')
